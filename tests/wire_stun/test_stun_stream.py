"""ChannelData, RFC 7983 demultiplexing and TCP stream framing (whole, byte by byte, trailing)."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import DecodeError, EncodeError
from wire.stun import (
    Attr,
    Attribute,
    ChannelDataFrame,
    Message,
    MessageClass,
    Method,
    PacketKind,
    StreamDecoder,
    StunDecodeError,
    StunFrame,
    classify_first_byte,
    decode_channel_data_untrusted,
    encode_channel_data,
    encode_message,
    encode_u32,
)


def stun_bytes(lifetime: int = 600) -> bytes:
    return encode_message(
        Message(
            Method.REFRESH,
            MessageClass.REQUEST,
            os.urandom(12),
            (Attribute(Attr.LIFETIME, encode_u32(lifetime)),),
        ),
        fingerprint=True,
    )


def drain(decoder: StreamDecoder) -> list[object]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_channel_data_round_trip_and_padding() -> None:
    plain = encode_channel_data(0x4001, b"hello")
    assert plain == b"\x40\x01\x00\x05hello"
    padded = encode_channel_data(0x4FFF, b"hello", pad=True)
    assert padded == b"\x4f\xff\x00\x05hello\x00\x00\x00"
    assert decode_channel_data_untrusted(plain) == (0x4001, b"hello")
    assert decode_channel_data_untrusted(padded) == (0x4FFF, b"hello")


@pytest.mark.parametrize(
    "data", [b"\x40\x00\x00", b"\x40\x00\x00\x05abc", b"\x50\x00\x00\x00", b"\x3f\xff\x00\x00"]
)
def test_bad_channel_data_is_dropped(data: bytes) -> None:
    with pytest.raises(StunDecodeError) as info:
        decode_channel_data_untrusted(data)
    assert info.value.hint is None


def test_channel_data_encoder_refuses_bad_numbers() -> None:
    with pytest.raises(EncodeError):
        encode_channel_data(0x3FFF, b"")
    with pytest.raises(EncodeError):
        encode_channel_data(0x5000, b"")


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (0, PacketKind.STUN), (3, PacketKind.STUN), (4, PacketKind.UNKNOWN), (16, PacketKind.ZRTP),
        (19, PacketKind.ZRTP), (20, PacketKind.DTLS), (63, PacketKind.DTLS),
        (64, PacketKind.CHANNEL_DATA), (79, PacketKind.CHANNEL_DATA), (80, PacketKind.UNKNOWN),
        (127, PacketKind.UNKNOWN), (128, PacketKind.RTP), (191, PacketKind.RTP), (192, PacketKind.UNKNOWN),
    ],
)  # fmt: skip
def test_rfc7983_first_byte(first: int, kind: PacketKind) -> None:
    assert classify_first_byte(first) is kind


def _mixed_stream() -> tuple[bytes, list[object]]:
    stun = stun_bytes()
    parts = [
        (encode_channel_data(0x4000, b"a", pad=True), ChannelDataFrame(0x4000, b"a")),
        (stun, StunFrame(stun)),
        (encode_channel_data(0x4ABC, b"", pad=True), ChannelDataFrame(0x4ABC, b"")),
        (encode_channel_data(0x4001, b"four", pad=True), ChannelDataFrame(0x4001, b"four")),
        (encode_channel_data(0x4002, bytes(1001), pad=True), ChannelDataFrame(0x4002, bytes(1001))),
        (stun, StunFrame(stun)),
    ]
    return b"".join(p for p, _ in parts), [f for _, f in parts]


def test_stream_fed_whole() -> None:
    stream, expected = _mixed_stream()
    decoder = StreamDecoder()
    decoder.receive_data(stream)
    assert drain(decoder) == expected
    assert decoder.buffered_bytes == 0


def test_stream_fed_byte_by_byte() -> None:
    stream, expected = _mixed_stream()
    decoder = StreamDecoder()
    frames: list[object] = []
    for i in range(len(stream)):
        decoder.receive_data(stream[i : i + 1])
        frames.extend(drain(decoder))
    assert frames == expected


def test_stream_with_trailing_partial_frame() -> None:
    stream, expected = _mixed_stream()
    tail = stun_bytes()[:13]
    decoder = StreamDecoder()
    decoder.receive_data(stream + tail)
    assert drain(decoder) == expected
    assert decoder.buffered_bytes == len(tail)
    rest = stun_bytes()
    decoder = StreamDecoder()
    decoder.receive_data(rest[:13])
    assert drain(decoder) == []
    decoder.receive_data(rest[13:])
    assert drain(decoder) == [StunFrame(rest)]


def test_unpadded_stream_mode() -> None:
    decoder = StreamDecoder(padded=False)
    decoder.receive_data(encode_channel_data(0x4000, b"abc") + encode_channel_data(0x4001, b"de"))
    assert drain(decoder) == [ChannelDataFrame(0x4000, b"abc"), ChannelDataFrame(0x4001, b"de")]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x80\x00\x00\x00",
        b"\x50\x00\x00\x00",
        b"\x00\x01\x00\x02\x21\x12\xa4\x42",
        b"\x00\x01\x00\x00\x01\x02\x03\x04",
    ],
    ids=["rtp", "reserved-channel", "bad-length", "bad-cookie"],
)
def test_stream_garbage_is_an_error(garbage: bytes) -> None:
    decoder = StreamDecoder()
    decoder.receive_data(garbage)
    with pytest.raises(StunDecodeError) as info:
        drain(decoder)
    assert info.value.hint is None


def test_stream_frame_size_limit() -> None:
    decoder = StreamDecoder(max_frame_bytes=1024)
    decoder.receive_data(encode_channel_data(0x4000, bytes(1021))[:4])
    with pytest.raises(StunDecodeError):
        decoder.next_frame()
    decoder = StreamDecoder(max_frame_bytes=1024)
    decoder.receive_data(b"\x00\x01\x04\x00\x21\x12\xa4\x42")
    with pytest.raises(StunDecodeError):
        decoder.next_frame()


def test_stream_buffer_limit() -> None:
    decoder = StreamDecoder(max_frame_bytes=64)
    with pytest.raises(StunDecodeError):
        decoder.receive_data(bytes(200_000))


frames_strategy = st.lists(
    st.one_of(
        st.builds(ChannelDataFrame, st.integers(0x4000, 0x4FFF), st.binary(max_size=300)),
        st.integers(0, 3600).map(lambda n: StunFrame(stun_bytes(n))),
    ),
    max_size=12,
)


def _encode(frame: object) -> bytes:
    if isinstance(frame, ChannelDataFrame):
        return encode_channel_data(frame.channel, frame.data, pad=True)
    assert isinstance(frame, StunFrame)
    return frame.data


@given(frames_strategy, st.lists(st.integers(1, 97), min_size=1, max_size=50))
@settings(max_examples=200)
def test_stream_any_split_gives_the_same_frames(frames: list[object], cuts: list[int]) -> None:
    stream = b"".join(_encode(f) for f in frames)
    decoder = StreamDecoder()
    out: list[object] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        decoder.receive_data(stream[pos : pos + step])
        out.extend(drain(decoder))
        pos += step
        i += 1
    assert out == frames


@given(st.lists(st.binary(max_size=80), max_size=8))
@settings(max_examples=300)
def test_stream_random_bytes_raise_only_decode_error(chunks: list[bytes]) -> None:
    decoder = StreamDecoder(max_frame_bytes=4096)
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            drain(decoder)
    except DecodeError:
        pass


@given(st.binary(max_size=80))
def test_channel_data_random_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_channel_data_untrusted(data)
