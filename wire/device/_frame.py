"""The device frame: a fixed 48-byte big-endian header and an opaque payload (docs/protocol.md §2).

The router reads a frame with one `struct.unpack_from` and keeps the received `bytes` object as
`raw`, so it can forward the very same object to the destination session: the payload is never
copied, sliced or re-encoded on the way.
"""

from __future__ import annotations

import struct
import uuid
from typing import NamedTuple

from wire._errors import DecodeError, EncodeError
from wire.device._codes import (
    ANYCAST_POLICY_SHIFT,
    DATA_TYPES,
    DEFINED_FLAG_BITS,
    KNOWN_TYPES,
    PROTOCOL_VERSION,
    ZERO_ID,
    AckStatus,
    Flags,
    FrameType,
    NackReason,
)

# version u8, type u8, flags u16, message id u64, source 16 B, destination 16 B, payload length u32
HEADER = struct.Struct("!BBHQ16s16sI")
HEADER_BYTES = HEADER.size  # 48
MAX_CONTROL_PAYLOAD_BYTES = 65536
MAX_NACK_DETAIL_BYTES = 1024
_ACK = struct.Struct("!BBH")
_ACK_FRAME = struct.Struct("!BBHQ16s16sIBBH")  # a whole ACK frame, for the router's hot path
_NACK_REASON = struct.Struct("!H")
_FLAGS = struct.Struct("!H")
_MAX_U64 = (1 << 64) - 1
_ACK_STATUSES = frozenset(int(s) for s in AckStatus)
# Plain ints for the per-frame checks (operations on enum members cost microseconds).
_POLICY_MASK = int(Flags.ANYCAST_POLICY_MASK)
_UNDEFINED_FLAGS = ~DEFINED_FLAG_BITS & 0xFFFF
_ANYCAST = int(FrameType.ANYCAST)
_ACK_TYPE = int(FrameType.ACK)


class FrameView(NamedTuple):
    """The header fields of a received frame and the frame itself (`raw`, not copied)."""

    version: int
    type: int
    flags: int
    message_id: int
    source: bytes
    destination: bytes
    payload_length: int
    raw: bytes

    @property
    def payload(self) -> memoryview:
        """The payload, as a view into `raw` (no copy)."""
        return memoryview(self.raw)[HEADER_BYTES:]

    @property
    def is_data(self) -> bool:
        """True for DIRECT, BROADCAST, MULTICAST and ANYCAST frames."""
        return self.type in DATA_TYPES

    @property
    def anycast_policy(self) -> int:
        """The anycast policy bits (0 server default, 1 round-robin, 2 least-outstanding)."""
        return (self.flags & Flags.ANYCAST_POLICY_MASK) >> ANYCAST_POLICY_SHIFT

    @property
    def source_uuid(self) -> uuid.UUID:
        """The source device id as a UUID."""
        return uuid.UUID(bytes=self.source)

    @property
    def destination_uuid(self) -> uuid.UUID:
        """The destination id as a UUID."""
        return uuid.UUID(bytes=self.destination)


_new_view = tuple.__new__


def decode_frame_untrusted(buf: bytes, *, max_payload: int) -> FrameView:
    """Read and check the header of one frame (one WebSocket binary message).

    `max_payload` limits data frames; control frames are limited to 64 KiB.
    Raises:
        DecodeError: `hint` is the NackReason to answer with (BAD_FRAME, TOO_LARGE,
            UNSUPPORTED_VERSION).
    """
    if len(buf) < HEADER_BYTES:
        raise DecodeError("frame shorter than its 48-byte header", hint=NackReason.BAD_FRAME)
    version, ftype, flags, mid, src, dst, length = HEADER.unpack_from(buf)
    if version != PROTOCOL_VERSION:
        raise DecodeError(f"protocol version {version}", hint=NackReason.UNSUPPORTED_VERSION)
    if length != len(buf) - HEADER_BYTES:
        raise DecodeError("payload length does not match the frame", hint=NackReason.BAD_FRAME)
    if ftype in DATA_TYPES:
        if length > max_payload:
            raise DecodeError("payload too large", hint=NackReason.TOO_LARGE)
    elif ftype not in KNOWN_TYPES:
        raise DecodeError(f"unknown frame type {ftype:#04x}", hint=NackReason.BAD_FRAME)
    elif length > MAX_CONTROL_PAYLOAD_BYTES:
        raise DecodeError("control payload over 64 KiB", hint=NackReason.TOO_LARGE)
    if flags:  # most frames carry no flags at all
        policy = (flags & _POLICY_MASK) >> ANYCAST_POLICY_SHIFT
        if flags & _UNDEFINED_FLAGS or policy == 3 or (policy and ftype != _ANYCAST):
            raise DecodeError(f"undefined flags {flags:#06x}", hint=NackReason.BAD_FRAME)
    # tuple.__new__ on the fields: the NamedTuple's own __new__ is a Python function of eight
    # arguments, a noticeable part of decoding a header.
    return _new_view(FrameView, (version, ftype, flags, mid, src, dst, length, buf))


def _id_bytes(value: bytes | uuid.UUID) -> bytes:
    raw = value.bytes if isinstance(value, uuid.UUID) else value
    if len(raw) != 16:
        raise EncodeError("ids are 16 bytes")
    return raw


def encode_frame_header(
    ftype: int,
    *,
    message_id: int,
    source: bytes | uuid.UUID,
    destination: bytes | uuid.UUID = ZERO_ID,
    payload_length: int,
    flags: int = 0,
) -> bytes:
    """Return the 48-byte header of a frame (for writers that send header and payload apart)."""
    if ftype not in KNOWN_TYPES:
        raise EncodeError(f"unknown frame type {ftype:#04x}")
    if not 0 <= message_id <= _MAX_U64:
        raise EncodeError("message id out of range")
    if flags & ~DEFINED_FLAG_BITS or not 0 <= flags <= 0xFFFF:
        raise EncodeError(f"undefined flags {flags:#x}")
    if not 0 <= payload_length <= 0xFFFFFFFF:
        raise EncodeError("payload too long")
    src, dst = _id_bytes(source), _id_bytes(destination)
    return HEADER.pack(PROTOCOL_VERSION, ftype, flags, message_id, src, dst, payload_length)


def encode_frame(
    ftype: int,
    *,
    message_id: int,
    source: bytes | uuid.UUID,
    destination: bytes | uuid.UUID = ZERO_ID,
    payload: bytes = b"",
    flags: int = 0,
) -> bytes:
    """Return a whole frame: header followed by `payload`."""
    header = encode_frame_header(
        ftype,
        message_id=message_id,
        source=source,
        destination=destination,
        payload_length=len(payload),
        flags=flags,
    )
    return header + payload


def with_flags(raw: bytes, flags: int) -> bytes:
    """Return a copy of frame `raw` with new flags (e.g. REDELIVERED on a queued message)."""
    if flags & ~DEFINED_FLAG_BITS or not 0 <= flags <= 0xFFFF:
        raise EncodeError(f"undefined flags {flags:#x}")
    return raw[:2] + _FLAGS.pack(flags) + raw[4:]


class Ack(NamedTuple):
    """ACK payload: what happened to the acknowledged message."""

    status: int
    recipients: int


class Nack(NamedTuple):
    """NACK payload: why the message was refused."""

    reason: int
    detail: str


def encode_ack_payload(status: AckStatus, recipients: int) -> bytes:
    """Return the 4-byte ACK payload: status u8, reserved u8 (0), recipients u16."""
    if not 0 <= recipients <= 0xFFFF:
        raise EncodeError("recipients out of range")
    return _ACK.pack(status, 0, recipients)


def encode_ack_frame(message_id: int, destination: bytes, status: AckStatus, recipients: int = 1) -> bytes:
    """Return a whole ACK frame (52 bytes) from the node, in one `struct.pack`."""
    if not 0 <= recipients <= 0xFFFF or not 0 <= message_id <= _MAX_U64 or len(destination) != 16:
        raise EncodeError("ACK field out of range")
    return _ACK_FRAME.pack(
        PROTOCOL_VERSION, _ACK_TYPE, 0, message_id, ZERO_ID, destination, 4, status, 0, recipients
    )


def encode_nack_frame(message_id: int, destination: bytes, reason: int, detail: str = "") -> bytes:
    """Return a whole NACK frame from the node."""
    payload = encode_nack_payload(reason, detail)
    header = encode_frame_header(
        FrameType.NACK,
        message_id=message_id,
        source=ZERO_ID,
        destination=destination,
        payload_length=len(payload),
    )
    return header + payload


def decode_ack_untrusted(payload: bytes | memoryview) -> Ack:
    """Parse an ACK payload."""
    if len(payload) != _ACK.size:
        raise DecodeError("ACK payload is 4 bytes", hint=NackReason.BAD_FRAME)
    status, reserved, recipients = _ACK.unpack_from(payload)
    if status not in _ACK_STATUSES or reserved:
        raise DecodeError("bad ACK status or reserved byte", hint=NackReason.BAD_FRAME)
    return Ack(status, recipients)


def encode_nack_payload(reason: int, detail: str = "") -> bytes:
    """Return a NACK payload: reason u16 then UTF-8 detail (cut to 1024 bytes)."""
    if not 0 < reason <= 0xFFFF:
        raise EncodeError("reason out of range")
    raw = detail.encode("utf-8")[:MAX_NACK_DETAIL_BYTES].decode("utf-8", "ignore")
    return _NACK_REASON.pack(reason) + raw.encode("utf-8")


def decode_nack_untrusted(payload: bytes | memoryview) -> Nack:
    """Parse a NACK payload; unknown reason numbers are kept (newer nodes may add some)."""
    if not 2 <= len(payload) <= 2 + MAX_NACK_DETAIL_BYTES:
        raise DecodeError("NACK payload is 2 to 1026 bytes", hint=NackReason.BAD_FRAME)
    (reason,) = _NACK_REASON.unpack_from(payload)
    if reason == 0:
        raise DecodeError("NACK reason 0 is reserved", hint=NackReason.BAD_FRAME)
    try:
        detail = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("NACK detail is not UTF-8", hint=NackReason.BAD_FRAME) from None
    return Nack(reason, detail)
