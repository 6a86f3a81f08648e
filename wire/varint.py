"""Protobuf base-128 varints (protobuf encoding guide, "Base 128 Varints"), for the hand-written
fast paths of the gRPC router (`node.rpc._codec`) and the mesh link (`node.mesh._peer_codec`)."""

from __future__ import annotations

_SMALL = [bytes((i,)) for i in range(0x80)]


def encode_varint(value: int) -> bytes:
    """A non-negative integer as a varint (values below 128, the usual sizes: one cached byte)."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class VarintError(ValueError):
    """The bytes do not hold a complete varint of at most ten bytes (64 bits)."""


def decode_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at `data[pos:end]` and the position after it. Raises VarintError when it runs
    past `end` or past ten bytes."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise VarintError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
