"""Typed control messages: JSON object payloads (UTF-8, at most 64 KiB) and the binary ACK/NACK.

Each message class lists its fields with a validator; decoding checks types, sizes and UUID
syntax and ignores unknown keys (newer peers may add some), encoding checks the same rules.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from wire._errors import DecodeError, EncodeError
from wire.device._codes import (
    LOCK_TYPES,
    ZERO_ID,
    AckStatus,
    FrameType,
    NackReason,
)
from wire.device._frame import (
    MAX_CONTROL_PAYLOAD_BYTES,
    FrameView,
    decode_ack_untrusted,
    decode_nack_untrusted,
    encode_ack_payload,
    encode_frame,
    encode_nack_payload,
)

Check = Callable[[Any], Any]  # returns the Python value for a JSON value, or raises ValueError


def text(min_bytes: int, max_bytes: int) -> Check:
    """A string of `min_bytes`..`max_bytes` UTF-8 bytes."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or not min_bytes <= len(value.encode("utf-8")) <= max_bytes:
            raise ValueError(f"expected a string of {min_bytes}-{max_bytes} UTF-8 bytes")
        return value

    return check


def integer(low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"expected an integer in {low}..{high}")
        return value

    return check


def number(low: float, high: float) -> Check:
    def check(value: Any) -> float:
        if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"expected a number in {low}..{high}")
        return float(value)

    return check


def boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError("expected true or false")
    return value


def device_uuid(value: Any) -> uuid.UUID:
    """A UUID in its canonical 36-character form (either case)."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str) or len(value) != 36:
        raise ValueError("expected a UUID string like 8-4-4-4-12 hex digits")
    parsed = uuid.UUID(value)  # ValueError on bad hex
    if str(parsed) != value.lower():
        raise ValueError("expected a UUID string like 8-4-4-4-12 hex digits")
    return parsed


def optional(check: Check) -> Check:
    def check_optional(value: Any) -> Any:
        return None if value is None else check(value)

    return check_optional


def items(check: Check, max_items: int) -> Check:
    def check_list(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple) or len(value) > max_items:
            raise ValueError(f"expected a list of at most {max_items} items")
        return tuple(check(v) for v in value)

    return check_list


def json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")  # noqa: TRY004 - every check raises ValueError
    return value


_JSON_SCALARS = frozenset({str, int, float, bool})


def _dump(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, tuple):
        return [_dump(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """Base of the JSON control messages; subclasses set TYPE and CHECKS."""

    TYPE: ClassVar[int]
    CHECKS: ClassVar[dict[str, Check]]

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ControlMessage:
        values = {}
        for name, check in cls.CHECKS.items():
            try:
                values[name] = check(obj.get(name))
            except ValueError as exc:
                raise DecodeError(f"{name}: {exc}", hint=NackReason.INVALID_INPUT) from None
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out = {}
        for name, check in self.CHECKS.items():  # the fields, in order (checked at import)
            value = getattr(self, name)
            try:
                check(value)
            except ValueError as exc:
                raise EncodeError(f"{name}: {exc}") from None
            if value is not None:  # absent and null mean the same; absent is shorter
                out[name] = value if type(value) in _JSON_SCALARS else _dump(value)
        return out


_TOKEN = text(1, 4096)
_SHORT = text(1, 128)
_NAME = text(1, 255)
_STATUS = text(1, 32)


@dataclass(frozen=True, slots=True)
class Hello(ControlMessage):
    """Device → node, first message when the client could not send `Authorization`."""

    TYPE = FrameType.HELLO
    CHECKS = {"token": _TOKEN, "client": optional(_SHORT)}
    token: str
    client: str | None = None


@dataclass(frozen=True, slots=True)
class Welcome(ControlMessage):
    """Node → device, once the session is authenticated."""

    TYPE = FrameType.WELCOME
    CHECKS = {
        "node": _SHORT,
        "session_id": _SHORT,
        "heartbeat_interval_s": number(0.001, 86_400),
        "max_payload_bytes": integer(0, 0xFFFFFFFF),
        "device_id": optional(device_uuid),
    }
    node: str
    session_id: str
    heartbeat_interval_s: float
    max_payload_bytes: int
    device_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Register(ControlMessage):
    """Device → node: announce (or update) this device and open its routing entry."""

    TYPE = FrameType.REGISTER
    CHECKS = {
        "device_id": device_uuid,
        "network_id": device_uuid,
        "name": _SHORT,
        "world_type": _STATUS,
        "capabilities": optional(items(_NAME, 256)),
        "hardware_spec": optional(json_object),
    }
    device_id: uuid.UUID
    network_id: uuid.UUID
    name: str
    world_type: str
    capabilities: tuple[str, ...] | None = None
    hardware_spec: dict[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True, slots=True)
class Registered(ControlMessage):
    """Node → device: the registration took effect."""

    TYPE = FrameType.REGISTERED
    CHECKS = {
        "device_id": device_uuid,
        "network_id": device_uuid,
        "queued": integer(0, 1 << 53),
        "replaced_session": boolean,
    }
    device_id: uuid.UUID
    network_id: uuid.UUID
    queued: int
    replaced_session: bool


@dataclass(frozen=True, slots=True)
class Heartbeat(ControlMessage):
    """Device → node: still here (any frame also counts); node → device: the answer."""

    TYPE = FrameType.HEARTBEAT
    CHECKS = {"status": optional(_STATUS)}
    status: str | None = None


@dataclass(frozen=True, slots=True)
class Join(ControlMessage):
    """Device → node: join the named multicast group of a network."""

    TYPE = FrameType.JOIN
    CHECKS = {"network_id": device_uuid, "group": _NAME}
    network_id: uuid.UUID
    group: str


@dataclass(frozen=True, slots=True)
class Leave(ControlMessage):
    """Device → node: leave a multicast group."""

    TYPE = FrameType.LEAVE
    CHECKS = {"network_id": device_uuid, "group": _NAME}
    network_id: uuid.UUID
    group: str


_SUBSCRIPTION = {"network_id": optional(device_uuid), "devices": optional(items(device_uuid, 1000))}


@dataclass(frozen=True, slots=True)
class Subscribe(ControlMessage):
    """Device → node: send me EVENTs about these devices and/or every device of a network."""

    TYPE = FrameType.SUBSCRIBE
    CHECKS = _SUBSCRIPTION
    network_id: uuid.UUID | None = None
    devices: tuple[uuid.UUID, ...] | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe(ControlMessage):
    """Device → node: stop the EVENTs of an earlier SUBSCRIBE (same fields)."""

    TYPE = FrameType.UNSUBSCRIBE
    CHECKS = _SUBSCRIPTION
    network_id: uuid.UUID | None = None
    devices: tuple[uuid.UUID, ...] | None = None


@dataclass(frozen=True, slots=True)
class Event(ControlMessage):
    """Node → device: a device's status changed."""

    TYPE = FrameType.EVENT
    CHECKS = {
        "event": _STATUS,
        "device_id": device_uuid,
        "status": _STATUS,
        "at": number(0, 1e11),
        "network_id": optional(device_uuid),
    }
    event: str
    device_id: uuid.UUID
    status: str
    at: float
    network_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class LockOp:
    """A frame of types 0x20-0x2F: a JSON object the lock service defines and validates."""

    type: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AckMessage:
    """ACK (binary payload)."""

    status: AckStatus
    recipients: int


@dataclass(frozen=True, slots=True)
class NackMessage:
    """NACK (binary payload); `reason` is a NackReason, or a plain int from a newer node."""

    reason: int
    detail: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """Receiver → node: the durable message (header source, message id) was processed."""


AnyControl = ControlMessage | LockOp | AckMessage | NackMessage | Delivered
_JSON_MESSAGES: tuple[type[ControlMessage], ...] = (
    Hello,
    Welcome,
    Register,
    Registered,
    Heartbeat,
    Join,
    Leave,
    Subscribe,
    Unsubscribe,
    Event,
)


def check_fields(classes: tuple[type[ControlMessage], ...]) -> None:
    """Raise TypeError unless each class's CHECKS name its fields in order (to_json relies on it)."""
    for cls in classes:
        if tuple(cls.CHECKS) != tuple(f.name for f in fields(cls)):
            raise TypeError(f"{cls.__name__}.CHECKS must list its fields in order")


check_fields(_JSON_MESSAGES)
_JSON_CLASSES = {cls.TYPE: cls for cls in _JSON_MESSAGES}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_json_object_untrusted(payload: bytes | memoryview) -> dict[str, Any]:
    """Parse a control payload: one UTF-8 JSON object, no duplicate keys, no NaN/Infinity."""
    try:
        obj = _DECODER.decode(str(payload, "utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise DecodeError(f"bad JSON payload: {exc}", hint=NackReason.BAD_FRAME) from None
    if not isinstance(obj, dict):
        raise DecodeError("control payload must be a JSON object", hint=NackReason.BAD_FRAME)
    return obj


def decode_control_untrusted(frame: FrameView) -> AnyControl:
    """Decode the payload of a control frame (any type that is not data)."""
    ftype = frame.type
    if ftype == FrameType.ACK:
        ack = decode_ack_untrusted(frame.payload)
        return AckMessage(AckStatus(ack.status), ack.recipients)
    if ftype == FrameType.NACK:
        nack = decode_nack_untrusted(frame.payload)
        return NackMessage(nack.reason, nack.detail)
    if ftype == FrameType.DELIVERED:
        if frame.payload_length:
            raise DecodeError("DELIVERED has no payload", hint=NackReason.BAD_FRAME)
        return Delivered()
    obj = decode_json_object_untrusted(frame.payload)
    if ftype in LOCK_TYPES:
        return LockOp(ftype, obj)
    cls = _JSON_CLASSES.get(ftype)
    if cls is None:
        raise DecodeError(f"frame type {ftype:#04x} is not a control type", hint=NackReason.BAD_FRAME)
    return cls.from_json(obj)


def _payload_of(message: AnyControl) -> tuple[int, bytes]:
    if isinstance(message, AckMessage):
        return FrameType.ACK, encode_ack_payload(message.status, message.recipients)
    if isinstance(message, NackMessage):
        return FrameType.NACK, encode_nack_payload(message.reason, message.detail)
    if isinstance(message, Delivered):
        return FrameType.DELIVERED, b""
    if isinstance(message, LockOp):
        if message.type not in LOCK_TYPES:
            raise EncodeError("lock operations use types 0x20-0x2F")
        obj = message.body
        ftype = message.type
    else:
        obj = message.to_json()
        ftype = message.TYPE
    try:
        payload = _ENCODER.encode(obj)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"payload is not JSON: {exc}") from None
    raw = payload.encode("utf-8")
    if len(raw) > MAX_CONTROL_PAYLOAD_BYTES:
        raise EncodeError("control payload over 64 KiB")
    return ftype, raw


def encode_control(
    message: AnyControl,
    *,
    message_id: int,
    source: bytes | uuid.UUID = ZERO_ID,
    destination: bytes | uuid.UUID = ZERO_ID,
    flags: int = 0,
) -> bytes:
    """Return the whole frame carrying a control message."""
    ftype, payload = _payload_of(message)
    return encode_frame(
        ftype,
        message_id=message_id,
        source=source,
        destination=destination,
        payload=payload,
        flags=flags,
    )
