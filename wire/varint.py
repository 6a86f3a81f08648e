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
