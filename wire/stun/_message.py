"""STUN messages (RFC 8489 §5, §14): ordered attributes, integrity and fingerprint.

Attributes keep their order and unknown ones are kept as raw values; callers ask
`Message.unknown_comprehension_required()` which ones must be answered with 420 (§6.3.1).
Integrity values are compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import struct
import zlib
from dataclasses import dataclass, field
from typing import Literal

from wire._errors import EncodeError
from wire.stun._constants import (
    COMPREHENSION_OPTIONAL_MIN,
    FINGERPRINT_XOR,
    HEADER_BYTES,
    KNOWN_ATTRIBUTES,
    MAGIC_COOKIE,
    MAX_MESSAGE_BYTES,
    TRANSACTION_ID_BYTES,
    Attr,
    MessageClass,
)
from wire.stun._errors import StunDecodeError

_HEADER = struct.Struct("!HHI")
_TLV = struct.Struct("!HH")
_MI_BYTES = 20
_MI256_MIN_BYTES = 16
_MI256_MAX_BYTES = 32

Integrity = Literal["sha1", "sha256", "both"]


@dataclass(frozen=True, slots=True)
class Attribute:
    """One TLV attribute; `value` is unpadded."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """A STUN message. `raw` and `offsets` are set by the decoder (for integrity checks) and do
    not take part in equality."""

    method: int
    cls: int
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()
    raw: bytes = field(default=b"", compare=False, repr=False)
    offsets: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of this type (RFC 8489 §14: later ones are ignored)."""
        for attribute in self.attributes:
            if attribute.type == attr_type:
                return attribute.value
        return None

    def get_all(self, attr_type: int) -> list[bytes]:
        """Every value of this type, in order."""
        return [a.value for a in self.attributes if a.type == attr_type]

    def has(self, attr_type: int) -> bool:
        """Whether an attribute of this type is present."""
        return any(a.type == attr_type for a in self.attributes)

    def offset_of(self, attr_type: int) -> int | None:
        """Byte offset of the first attribute of this type in `raw` (decoded messages only)."""
        for attribute, offset in zip(self.attributes, self.offsets, strict=False):
            if attribute.type == attr_type:
                return offset
        return None

    def unknown_comprehension_required(
        self, understood: frozenset[int] = KNOWN_ATTRIBUTES
    ) -> tuple[int, ...]:
        """Comprehension-required types (0x0000-0x7FFF) not in `understood`, each listed once."""
        unknown: list[int] = []
        for attribute in self.attributes:
            kind = attribute.type
            if kind < COMPREHENSION_OPTIONAL_MIN and kind not in understood and kind not in unknown:
                unknown.append(kind)
        return tuple(unknown)


def message_type(method: int, cls: int) -> int:
    """Interleave the 12 method bits and 2 class bits into the 14-bit type (RFC 8489 §5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def split_message_type(msg_type: int) -> tuple[int, int]:
    """(method, class) of a 14-bit message type."""
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    cls = ((msg_type >> 4) & 0b01) | ((msg_type >> 7) & 0b10)
    return method, cls


def is_stun_header(data: bytes | bytearray | memoryview) -> bool:
    """Cheap pre-check: two zero bits, a multiple-of-4 length and the magic cookie."""
    if len(data) < HEADER_BYTES:
        return False
    msg_type, length, cookie = _HEADER.unpack_from(data)
    return not (msg_type & 0xC000 or length & 3 or cookie != MAGIC_COOKIE)


def decode_message_untrusted(
    data: bytes | bytearray | memoryview, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> Message:
    """Decode one STUN message that fills `data` exactly.

    Raises:
        StunDecodeError: hint None (drop) for a bad header, framing or FINGERPRINT; hint 400 for a
            request whose integrity attribute has a bad size.
    """
    raw = bytes(data)
    size = len(raw)
    if size < HEADER_BYTES:
        raise StunDecodeError("shorter than a STUN header")
    if size > max_bytes:
        raise StunDecodeError(f"STUN message over {max_bytes} bytes")
    msg_type, length, cookie = _HEADER.unpack_from(raw)
    if msg_type & 0xC000 or cookie != MAGIC_COOKIE:
        raise StunDecodeError("not a STUN message (type bits or magic cookie)")
    if length & 3 or HEADER_BYTES + length != size:
        raise StunDecodeError("STUN length does not match the message")
    method, cls = split_message_type(msg_type)
    transaction_id = raw[8:HEADER_BYTES]
    attributes, offsets = _decode_attributes(raw, method, cls, transaction_id)
    return Message(method, cls, transaction_id, attributes, raw, offsets)


def _decode_attributes(
    raw: bytes, method: int, cls: int, transaction_id: bytes
) -> tuple[tuple[Attribute, ...], tuple[int, ...]]:
    def fail(reason: str, hint: int | None = None) -> StunDecodeError:
        if cls != MessageClass.REQUEST:
            hint = None
        return StunDecodeError(reason, hint=hint, method=method, cls=cls, transaction_id=transaction_id)

    size = len(raw)
    attributes: list[Attribute] = []
    offsets: list[int] = []
    after_integrity = after_integrity_sha256 = False
    pos = HEADER_BYTES
    while pos < size:
        if pos + 4 > size:
            raise fail("truncated attribute header")
        kind, length = _TLV.unpack_from(raw, pos)
        end = pos + 4 + length
        if end > size:
            raise fail("attribute runs past the message")
        if kind == Attr.FINGERPRINT:
            if end + (-length & 3) != size:
                raise fail("FINGERPRINT is not the last attribute")
            _check_fingerprint(raw, pos, length)
        elif kind == Attr.MESSAGE_INTEGRITY_SHA256:
            if after_integrity_sha256:
                pos = end + (-length & 3)
                continue
            if length < _MI256_MIN_BYTES or length > _MI256_MAX_BYTES or length & 3:
                raise fail("bad MESSAGE-INTEGRITY-SHA256 size", 400)
            after_integrity = after_integrity_sha256 = True
        elif after_integrity:
            # RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY are ignored, except
            # MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.
            pos = end + (-length & 3)
            continue
        elif kind == Attr.MESSAGE_INTEGRITY:
            if length != _MI_BYTES:
                raise fail("bad MESSAGE-INTEGRITY size", 400)
            after_integrity = True
        attributes.append(Attribute(kind, raw[pos + 4 : end]))
        offsets.append(pos)
        pos = end + (-length & 3)
    if pos != size:
        raise fail("attribute padding runs past the message")
    return tuple(attributes), tuple(offsets)


def _check_fingerprint(raw: bytes, pos: int, length: int) -> None:
    if length != 4:
        raise StunDecodeError("bad FINGERPRINT size")
    expected = (zlib.crc32(raw[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    if int.from_bytes(raw[pos + 4 : pos + 8], "big") != expected:
        raise StunDecodeError("FINGERPRINT mismatch")


def encode_message(
    message: Message,
    *,
    integrity_key: bytes | None = None,
    integrity: Integrity = "sha1",
    fingerprint: bool = False,
) -> bytes:
    """Encode `message`; append MESSAGE-INTEGRITY(-SHA256) with `integrity_key`, then FINGERPRINT.

    Raises:
        EncodeError: a field or the whole message is out of range.
    """
    if len(message.transaction_id) != TRANSACTION_ID_BYTES:
        raise EncodeError("transaction id must be 12 bytes")
    if not 0 <= message.method <= 0xFFF or not 0 <= message.cls <= 3:
        raise EncodeError("method or class out of range")
    msg_type = message_type(message.method, message.cls)
    body = bytearray()
    for attribute in message.attributes:
        _append_attribute(body, attribute.type, attribute.value)
    prefix = _HEADER.pack(msg_type, 0, MAGIC_COOKIE) + message.transaction_id
    if integrity_key is not None:
        if integrity in ("sha1", "both"):
            mac = _mac("sha1", integrity_key, prefix, body, 4 + _MI_BYTES)
            _append_attribute(body, Attr.MESSAGE_INTEGRITY, mac)
        if integrity in ("sha256", "both"):
            mac = _mac("sha256", integrity_key, prefix, body, 4 + _MI256_MAX_BYTES)
            _append_attribute(body, Attr.MESSAGE_INTEGRITY_SHA256, mac)
    if fingerprint:
        crc = zlib.crc32(_with_length(prefix, len(body) + 8) + body) ^ FINGERPRINT_XOR
        _append_attribute(body, Attr.FINGERPRINT, (crc & 0xFFFFFFFF).to_bytes(4, "big"))
    if len(body) > 0xFFFF:
        raise EncodeError("STUN message too long")
    return _with_length(prefix, len(body)) + body


def _append_attribute(body: bytearray, kind: int, value: bytes) -> None:
    if not 0 <= kind <= 0xFFFF or len(value) > 0xFFFF:
        raise EncodeError("attribute type or length out of range")
    body += _TLV.pack(kind, len(value))
    body += value
    body += b"\x00" * (-len(value) & 3)


def _with_length(prefix: bytes, length: int) -> bytes:
    return prefix[:2] + length.to_bytes(2, "big") + prefix[4:]


def _mac(digest: str, key: bytes, prefix: bytes, body: bytes | bytearray, extra: int) -> bytes:
    covered = _with_length(prefix, len(body) + extra) + body
    return hmac.digest(key, covered, digest)


def verify_message_integrity(message: Message, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) in constant time; False if absent."""
    offset = message.offset_of(Attr.MESSAGE_INTEGRITY)
    if offset is None:
        return False
    covered = _with_length(message.raw[:HEADER_BYTES], offset - HEADER_BYTES + 4 + _MI_BYTES)
    covered += message.raw[HEADER_BYTES:offset]
    expected = hmac.digest(key, covered, "sha1")
    received = message.raw[offset + 4 : offset + 4 + _MI_BYTES]
    return hmac.compare_digest(expected, received)


def verify_message_integrity_sha256(message: Message, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6), possibly truncated; False if absent."""
    offset = message.offset_of(Attr.MESSAGE_INTEGRITY_SHA256)
    if offset is None:
        return False
    length = int.from_bytes(message.raw[offset + 2 : offset + 4], "big")
    covered = _with_length(message.raw[:HEADER_BYTES], offset - HEADER_BYTES + 4 + length)
    covered += message.raw[HEADER_BYTES:offset]
    expected = hmac.digest(key, covered, "sha256")[:length]
    received = message.raw[offset + 4 : offset + 4 + length]
    return hmac.compare_digest(expected, received)


def has_fingerprint(message: Message) -> bool:
    """Whether the decoded message carried a (verified) FINGERPRINT."""
    return message.has(Attr.FINGERPRINT)
