"""Attribute value codecs (RFC 8489 §14, RFC 8656 §18, RFC 5780 §7).

Decoders of untrusted values raise `StunDecodeError` with hint 400; addresses are
`(host, port)` with the host in `socket.inet_ntop` form.
"""

from __future__ import annotations

import socket
import struct

from wire._errors import EncodeError
from wire.stun._constants import (
    ERROR_REASONS,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    AddressFamily,
)
from wire.stun._errors import StunDecodeError

Address = tuple[str, int]

_XOR_PORT = MAGIC_COOKIE >> 16
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
MAX_REASON_BYTES = 763  # RFC 8489 §14.8: fewer than 128 characters
MAX_USERNAME_BYTES = 509  # RFC 8489 §14.3
MAX_TEXT_CHARS = 127  # REALM, NONCE, SOFTWARE, reason phrases: "fewer than 128 characters"


def _bad(reason: str) -> StunDecodeError:
    return StunDecodeError(reason, hint=400)


def family_of(host: str) -> AddressFamily:
    """IPv6 when the host text has a colon, else IPv4."""
    return AddressFamily.IPV6 if ":" in host else AddressFamily.IPV4


def _pack_host(host: str) -> tuple[AddressFamily, bytes]:
    family = family_of(host)
    try:
        packed = socket.inet_pton(socket.AF_INET6 if family == AddressFamily.IPV6 else socket.AF_INET, host)
    except (OSError, ValueError):
        raise EncodeError(f"not an IP address: {host!r}") from None
    return family, packed


def _unpack_host(family: int, packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if family == AddressFamily.IPV6 else socket.AF_INET, packed)


def encode_address(host: str, port: int) -> bytes:
    """MAPPED-ADDRESS style value (also OTHER-ADDRESS, RESPONSE-ORIGIN, ALTERNATE-SERVER)."""
    family, packed = _pack_host(host)
    if not 0 <= port <= 0xFFFF:
        raise EncodeError("port out of range")
    return bytes((0, family)) + _U16.pack(port) + packed


def decode_address_untrusted(value: bytes) -> Address:
    """Decode a MAPPED-ADDRESS style value."""
    family, port, packed = _split_address(value)
    return _unpack_host(family, packed), port


def _split_address(value: bytes) -> tuple[int, int, bytes]:
    if len(value) < 4:
        raise _bad("address attribute too short")
    family = value[1]
    if family == AddressFamily.IPV4 and len(value) == 8:
        return family, _U16.unpack_from(value, 2)[0], value[4:8]
    if family == AddressFamily.IPV6 and len(value) == 20:
        return family, _U16.unpack_from(value, 2)[0], value[4:20]
    raise _bad("bad address family or length")


def _xor_mask(family: int, transaction_id: bytes) -> bytes:
    return MAGIC_COOKIE_BYTES if family == AddressFamily.IPV4 else MAGIC_COOKIE_BYTES + transaction_id


def _xor(data: bytes, mask: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(data), "big")


def encode_xor_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS / XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS value (RFC 8489 §14.2)."""
    family, packed = _pack_host(host)
    if not 0 <= port <= 0xFFFF:
        raise EncodeError("port out of range")
    return bytes((0, family)) + _U16.pack(port ^ _XOR_PORT) + _xor(packed, _xor_mask(family, transaction_id))


def decode_xor_address_untrusted(value: bytes, transaction_id: bytes) -> Address:
    """Decode an XOR-*-ADDRESS value."""
    family, port, packed = _split_address(value)
    return _unpack_host(family, _xor(packed, _xor_mask(family, transaction_id))), port ^ _XOR_PORT


def encode_error_code(code: int, reason: str | None = None) -> bytes:
    """ERROR-CODE value: class, number and reason phrase (RFC 8489 §14.8)."""
    if not 300 <= code <= 699:
        raise EncodeError("error code out of range")
    text = (ERROR_REASONS.get(code, "") if reason is None else reason).encode()[:MAX_REASON_BYTES]
    return bytes((0, 0, code // 100, code % 100)) + text


def decode_error_code_untrusted(value: bytes) -> tuple[int, str]:
    """(code, reason phrase) of an ERROR-CODE value."""
    if len(value) < 4 or len(value) > 4 + MAX_REASON_BYTES:
        raise _bad("bad ERROR-CODE length")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise _bad("ERROR-CODE out of range")
    return klass * 100 + number, value[4:].decode("utf-8", "replace")


def encode_address_error_code(family: int, code: int, reason: str | None = None) -> bytes:
    """ADDRESS-ERROR-CODE value (RFC 8656 §18.13): family, then an ERROR-CODE body."""
    return bytes((family,)) + encode_error_code(code, reason)[1:]


def decode_address_error_code_untrusted(value: bytes) -> tuple[int, int, str]:
    """(family, code, reason) of an ADDRESS-ERROR-CODE value."""
    if len(value) < 4:
        raise _bad("bad ADDRESS-ERROR-CODE length")
    code, reason = decode_error_code_untrusted(b"\x00" + value[1:])
    return value[0], code, reason


def encode_unknown_attributes(types: tuple[int, ...] | list[int]) -> bytes:
    """UNKNOWN-ATTRIBUTES value: 16-bit types (RFC 8489 §14.9)."""
    return b"".join(_U16.pack(t) for t in types)


def decode_unknown_attributes_untrusted(value: bytes) -> tuple[int, ...]:
    """The attribute types listed in UNKNOWN-ATTRIBUTES."""
    if len(value) & 1:
        raise _bad("odd UNKNOWN-ATTRIBUTES length")
    return tuple(_U16.unpack_from(value, i)[0] for i in range(0, len(value), 2))


def encode_u32(number: int) -> bytes:
    """A 32-bit unsigned value (LIFETIME, PRIORITY, CACHE-TIMEOUT)."""
    if not 0 <= number <= 0xFFFFFFFF:
        raise EncodeError("value out of 32-bit range")
    return _U32.pack(number)


def decode_u32_untrusted(value: bytes) -> int:
    """A 32-bit unsigned value."""
    if len(value) != 4:
        raise _bad("expected a 4-byte value")
    return int(_U32.unpack(value)[0])


def encode_channel_number(channel: int) -> bytes:
    """CHANNEL-NUMBER value: the number then 16 RFFU bits (RFC 8656 §18.1)."""
    if not 0 <= channel <= 0xFFFF:
        raise EncodeError("channel number out of range")
    return _U16.pack(channel) + b"\x00\x00"


def decode_channel_number_untrusted(value: bytes) -> int:
    """The channel number of a CHANNEL-NUMBER value."""
    if len(value) != 4:
        raise _bad("bad CHANNEL-NUMBER length")
    return int(_U16.unpack_from(value)[0])


def encode_requested_transport(protocol: int) -> bytes:
    """REQUESTED-TRANSPORT value: IP protocol number then 24 RFFU bits (RFC 8656 §18.7)."""
    return bytes((protocol & 0xFF, 0, 0, 0))


def decode_requested_transport_untrusted(value: bytes) -> int:
    """The IP protocol number of a REQUESTED-TRANSPORT value."""
    if len(value) != 4:
        raise _bad("bad REQUESTED-TRANSPORT length")
    return value[0]


def encode_address_family(family: int) -> bytes:
    """REQUESTED-/ADDITIONAL-ADDRESS-FAMILY value (RFC 8656 §18.8, §18.11)."""
    return bytes((family & 0xFF, 0, 0, 0))


def decode_address_family_untrusted(value: bytes) -> int:
    """The family code of a REQUESTED-/ADDITIONAL-ADDRESS-FAMILY value."""
    if len(value) != 4:
        raise _bad("bad address family length")
    return value[0]


def encode_even_port(reserve_next: bool) -> bytes:
    """EVEN-PORT value: the R bit then 7 RFFU bits (RFC 8656 §18.6)."""
    return b"\x80" if reserve_next else b"\x00"


def decode_even_port_untrusted(value: bytes) -> bool:
    """The R (reserve next port) bit of an EVEN-PORT value."""
    if len(value) != 1:
        raise _bad("bad EVEN-PORT length")
    return bool(value[0] & 0x80)


def decode_reservation_token_untrusted(value: bytes) -> bytes:
    """The 8-byte token of RESERVATION-TOKEN (RFC 8656 §18.9)."""
    if len(value) != 8:
        raise _bad("bad RESERVATION-TOKEN length")
    return value


def encode_icmp(icmp_type: int, icmp_code: int, error_data: int) -> bytes:
    """ICMP value (RFC 8656 §18.13): 16 reserved bits, a 7-bit type and a 9-bit code (the field
    widths of the RFC's diagram), then 32 bits of error data."""
    if not 0 <= icmp_type <= 0x7F or not 0 <= icmp_code <= 0x1FF:
        raise EncodeError("ICMP type or code out of range")
    return b"\x00\x00" + _U16.pack(icmp_type << 9 | icmp_code) + encode_u32(error_data)


def decode_icmp_untrusted(value: bytes) -> tuple[int, int, int]:
    """(type, code, error data) of an ICMP value."""
    if len(value) != 8:
        raise _bad("bad ICMP length")
    bits = _U16.unpack_from(value, 2)[0]
    return bits >> 9, bits & 0x1FF, int(_U32.unpack_from(value, 4)[0])


def encode_password_algorithms(algorithms: list[tuple[int, bytes]]) -> bytes:
    """PASSWORD-ALGORITHMS value: (algorithm, parameters) entries (RFC 8489 §14.11)."""
    return b"".join(encode_password_algorithm(alg, params) for alg, params in algorithms)


def decode_password_algorithms_untrusted(value: bytes) -> list[tuple[int, bytes]]:
    """The (algorithm, parameters) entries of PASSWORD-ALGORITHMS."""
    entries: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(value):
        if pos + 4 > len(value):
            raise _bad("truncated PASSWORD-ALGORITHMS entry")
        algorithm, length = struct.unpack_from("!HH", value, pos)
        end = pos + 4 + length
        if end > len(value):
            raise _bad("PASSWORD-ALGORITHMS entry runs past the value")
        entries.append((algorithm, value[pos + 4 : end]))
        pos = end + (-length & 3)
    return entries


def encode_password_algorithm(algorithm: int, params: bytes = b"") -> bytes:
    """PASSWORD-ALGORITHM value (RFC 8489 §14.12)."""
    return struct.pack("!HH", algorithm, len(params)) + params + b"\x00" * (-len(params) & 3)


def decode_password_algorithm_untrusted(value: bytes) -> tuple[int, bytes]:
    """(algorithm, parameters) of PASSWORD-ALGORITHM."""
    entries = decode_password_algorithms_untrusted(value)
    if len(entries) != 1:
        raise _bad("PASSWORD-ALGORITHM must hold one entry")
    return entries[0]


def encode_change_request(flags: int) -> bytes:
    """CHANGE-REQUEST value (RFC 5780 §7.2): change-IP 0x4, change-port 0x2."""
    return _U32.pack(flags & 0x6)


def decode_change_request_untrusted(value: bytes) -> int:
    """The change-IP / change-port flags of CHANGE-REQUEST."""
    return decode_u32_untrusted(value) & 0x6


def decode_text_untrusted(value: bytes, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """UTF-8 text of REALM, NONCE, SOFTWARE or USERNAME with a character limit."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("text attribute is not UTF-8") from None
    if len(text) > max_chars:
        raise _bad("text attribute too long")
    return text
