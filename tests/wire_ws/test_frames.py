"""RFC 6455 framing: §5.7 vectors fed whole, byte by byte and many frames per chunk; errors; Hypothesis."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.speedups import apply_mask

from wire import DecodeError, EncodeError
from wire.ws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    FrameDecoder,
    Ping,
    Pong,
    WsEvent,
    encode_binary_header,
    encode_close,
    encode_control_frame,
    encode_frame_header,
    unmask_python,
)

MASK = bytes.fromhex("37fa213d")


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = MASK, rsv: int = 0) -> bytes:
    """A masked client frame, built independently of the code under test."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def decode_all(chunks: list[bytes], *, max_message_bytes: int = 1 << 20, unmask=None) -> list[WsEvent]:
    decoder = FrameDecoder(max_message_bytes=max_message_bytes, unmask=unmask)
    events: list[WsEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events


def feeds(data: bytes) -> list[list[bytes]]:
    """The same stream whole, byte by byte, and in 7-byte pieces."""
    return [
        [data],
        [data[i : i + 1] for i in range(len(data))],
        [data[i : i + 7] for i in range(0, len(data), 7)],
    ]


# RFC 6455 §5.7 examples (the masked ones verbatim; the unmasked ones are server frames).
RFC_MASKED_HELLO = bytes.fromhex("818537fa213d7f9f4d5158")
RFC_MASKED_PONG = bytes.fromhex("8a8537fa213d7f9f4d5158")


@pytest.mark.parametrize("unmask", [None, apply_mask], ids=["python", "c"])
def test_rfc_masked_text_vector(unmask) -> None:
    for chunks in feeds(RFC_MASKED_HELLO):
        assert decode_all(chunks, unmask=unmask) == ["Hello"]


def test_rfc_masked_pong_vector() -> None:
    for chunks in feeds(RFC_MASKED_PONG):
        assert decode_all(chunks) == [Pong(b"Hello")]


def test_rfc_fragmented_text_with_interleaved_ping() -> None:
    # §5.7 "Hel" + "lo" in two fragments, with a ping between them (§5.4 allows control frames there).
    stream = (
        client_frame(OP_TEXT, b"Hel", fin=False)
        + client_frame(OP_PING, b"p")
        + client_frame(OP_CONTINUATION, b"lo")
    )
    for chunks in feeds(stream):
        assert decode_all(chunks) == [Ping(b"p"), "Hello"]


@pytest.mark.parametrize("size", [0, 125, 126, 256, 65535, 65536, 70000])
def test_lengths_in_all_three_encodings(size: int) -> None:
    payload = os.urandom(size)
    stream = client_frame(OP_BINARY, payload)
    assert decode_all([stream]) == [payload]
    assert decode_all([stream[i : i + 1000] for i in range(0, len(stream), 1000)]) == [payload]


def test_many_frames_in_one_chunk_and_carry_over() -> None:
    messages = [os.urandom(n) for n in (1, 64, 200, 4096, 0, 9)]
    stream = b"".join(client_frame(OP_BINARY, m) for m in messages)
    decoder = FrameDecoder(max_message_bytes=1 << 16)
    cut = len(stream) - 5
    first = decoder.feed(stream[:cut])
    assert first == messages[:-1]
    assert decoder.buffered_bytes == len(client_frame(OP_BINARY, messages[-1])) - 5
    assert decoder.feed(stream[cut:]) == messages[-1:]
    assert decoder.buffered_bytes == 0


def test_close_frame_body_and_rest_ignored() -> None:
    stream = client_frame(OP_CLOSE, struct.pack("!H", 1001) + "bye ✓".encode()) + client_frame(
        OP_BINARY, b"late"
    )
    for chunks in feeds(stream):
        assert decode_all(chunks) == [Close(1001, "bye ✓")]


def test_empty_close_reports_1005() -> None:
    assert decode_all([client_frame(OP_CLOSE, b"")]) == [Close(1005, "")]


@pytest.mark.parametrize(
    ("stream", "hint"),
    [
        (bytes.fromhex("8205") + b"Hello", 1002),  # unmasked client frame (§5.1)
        (client_frame(OP_BINARY, b"x", rsv=0x40), 1002),  # RSV1 without an extension
        (client_frame(0x3, b"x"), 1002),  # reserved data opcode
        (client_frame(0xB, b"x"), 1002),  # reserved control opcode
        (client_frame(OP_PING, b"x", fin=False), 1002),  # fragmented control frame
        (client_frame(OP_PING, b"x" * 126), 1002),  # control frame over 125 bytes
        (client_frame(OP_CONTINUATION, b"x"), 1002),  # nothing to continue
        (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), 1002),
        (client_frame(OP_TEXT, b"\xff\xfe"), 1007),  # invalid UTF-8
        (client_frame(OP_TEXT, b"\xe2\x82", fin=False) + client_frame(OP_CONTINUATION, b"\x28"), 1007),
        (client_frame(OP_CLOSE, b"\x03"), 1002),  # one-byte close body
        (client_frame(OP_CLOSE, struct.pack("!H", 1005)), 1002),  # code that must not be sent
        (client_frame(OP_CLOSE, struct.pack("!H", 999)), 1002),
        (client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xc3"), 1007),
        (bytes.fromhex("82ff8000000000000000") + MASK, 1002),  # 64-bit length with the MSB set
    ],
)
def test_protocol_errors_carry_close_code(stream: bytes, hint: int) -> None:
    for chunks in feeds(stream):
        with pytest.raises(DecodeError) as info:
            decode_all(chunks)
        assert info.value.hint == hint


def test_too_big_single_and_fragmented_before_payload_arrives() -> None:
    decoder = FrameDecoder(max_message_bytes=100)
    with pytest.raises(DecodeError) as info:
        decoder.feed(client_frame(OP_BINARY, b"x" * 101)[:8])  # header alone is enough
    assert info.value.hint == 1009
    decoder = FrameDecoder(max_message_bytes=100)
    assert decoder.feed(client_frame(OP_BINARY, b"x" * 60, fin=False)) == []
    with pytest.raises(DecodeError) as info:
        decoder.feed(client_frame(OP_CONTINUATION, b"x" * 41))
    assert info.value.hint == 1009
    assert decode_all([client_frame(OP_BINARY, b"x" * 100)], max_message_bytes=100) == [b"x" * 100]


def test_too_big_with_a_16_bit_length_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_message_bytes=200)
    with pytest.raises(DecodeError) as info:
        decoder.feed(client_frame(OP_BINARY, b"x" * 300)[:8])
    assert info.value.hint == 1009


def test_all_binary_says_whether_one_feed_returned_binary_messages_only() -> None:
    decoder = FrameDecoder(max_message_bytes=1 << 20)
    assert decoder.feed(client_frame(OP_BINARY, b"a") + client_frame(OP_BINARY, b"b" * 300)) == [
        b"a",
        b"b" * 300,
    ]
    assert decoder.all_binary
    assert decoder.feed(client_frame(OP_BINARY, b"c") + client_frame(OP_PING, b"p")) == [b"c", Ping(b"p")]
    assert not decoder.all_binary
    assert decoder.feed(client_frame(OP_BINARY, b"d")) == [b"d"]
    assert decoder.all_binary
    assert decoder.feed(client_frame(OP_TEXT, b"t")) == ["t"]
    assert not decoder.all_binary
    assert decoder.feed(client_frame(OP_BINARY, b"e")[:3]) == []  # cut: nothing returned yet
    assert decoder.all_binary
    assert decoder.feed(client_frame(OP_BINARY, b"e")[3:] + client_frame(OP_PONG, b"")) == [b"e", Pong(b"")]
    assert not decoder.all_binary


def test_encode_headers_match_rfc_examples() -> None:
    assert encode_frame_header(OP_TEXT, 5) + b"Hello" == bytes.fromhex("810548656c6c6f")
    assert encode_control_frame(OP_PING, b"Hello") == bytes.fromhex("890548656c6c6f")
    assert encode_binary_header(256) == bytes.fromhex("827e0100")
    assert encode_binary_header(65536) == bytes.fromhex("827f0000000000010000")
    assert encode_binary_header(125) == bytes.fromhex("827d")
    assert encode_frame_header(OP_TEXT, 3, fin=False) == bytes.fromhex("0103")
    assert encode_frame_header(OP_CONTINUATION, 2) == bytes.fromhex("8002")


def test_encode_close() -> None:
    assert encode_close(1000, "ok") == bytes.fromhex("880403e86f6b")
    assert encode_close(1005) == bytes.fromhex("8800")
    frame = encode_close(4000, "é" * 100)  # cut at a character boundary within 125 bytes
    assert len(frame) <= 127
    frame[4:].decode("utf-8")
    with pytest.raises(EncodeError):
        encode_close(1006)
    with pytest.raises(EncodeError):
        encode_control_frame(OP_PONG, b"x" * 126)


@settings(deadline=None)
@given(st.binary(max_size=5000), st.binary(min_size=4, max_size=4))
def test_python_unmask_equals_c(data: bytes, mask: bytes) -> None:
    assert unmask_python(data, mask) == apply_mask(data, mask)
    assert unmask_python(memoryview(data), mask) == apply_mask(data, mask)


messages_st = st.lists(st.one_of(st.binary(max_size=300), st.text(max_size=100)), max_size=12)


@settings(max_examples=100, deadline=None)
@given(messages_st, st.data())
def test_roundtrip_with_fragmentation_and_random_chunking(
    messages: list[bytes | str], data: st.DataObject
) -> None:
    stream = b""
    for m in messages:
        raw = m.encode() if isinstance(m, str) else m
        opcode = OP_TEXT if isinstance(m, str) else OP_BINARY
        pieces = data.draw(st.integers(1, 3))
        step = max(1, len(raw) // pieces)
        parts = [raw[i : i + step] for i in range(0, len(raw), step)] or [b""]
        for i, part in enumerate(parts):
            op = opcode if i == 0 else OP_CONTINUATION
            stream += client_frame(
                op, part, fin=i == len(parts) - 1, mask=data.draw(st.binary(min_size=4, max_size=4))
            )
            if data.draw(st.booleans()):
                stream += client_frame(OP_PING, b"k")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoded = [e for e in decode_all(chunks) if not isinstance(e, Ping)]
    assert decoded == messages


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_raise_only_decode_error(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_message_bytes=1000)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
    except DecodeError as exc:
        hint = exc.hint
        assert hint in (1002, 1007, 1009)
