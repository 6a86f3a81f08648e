"""Protobuf varints: the encoding guide's examples, and every value decodes back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.varint import VarintError, decode_varint, encode_varint


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


@given(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=4))
def test_decode_reads_one_varint_and_says_where_it_ends(value: int, after: bytes) -> None:
    data = b"\xaa" + encode_varint(value) + after
    assert decode_varint(data, 1, len(data)) == (value, len(data) - len(after))


def test_decode_refuses_a_truncated_or_overlong_varint() -> None:
    assert decode_varint(b"\x96\x01", 0, 2) == (150, 2)
    for data, end in ((b"\x96\x01", 1), (b"", 0), (b"\x80" * 10 + b"\x01", 11)):
        with pytest.raises(VarintError):
            decode_varint(data, 0, end)
