"""Protobuf varints: the encoding guide's examples, and every value decodes back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wire.varint import encode_varint


def _decode(data: bytes) -> int:
    value = 0
    for i, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * i)
        assert bool(byte & 0x80) == (i < len(data) - 1)  # continuation bit on all but the last
    return value


def test_the_encoding_guides_examples() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(1) == b"\x01"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(150) == b"\x96\x01"
    assert encode_varint(300) == b"\xac\x02"
    assert encode_varint(2**64 - 1) == b"\xff" * 9 + b"\x01"


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_every_value_decodes_back_in_the_fewest_bytes(value: int) -> None:
    data = encode_varint(value)
    assert _decode(data) == value
    assert len(data) == max(1, -(-value.bit_length() // 7))
