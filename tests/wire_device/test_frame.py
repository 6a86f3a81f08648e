"""Device frames: byte-exact vectors, header checks, zero-copy view, ACK/NACK payloads, derived ids."""

from __future__ import annotations

import hashlib
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import DecodeError, EncodeError
from wire.device import (
    HEADER_BYTES,
    NACK_SLUGS,
    ZERO_ID,
    AckStatus,
    AnycastPolicy,
    Flags,
    FrameType,
    NackReason,
    capability_id,
    decode_ack_untrusted,
    decode_frame_untrusted,
    decode_nack_untrusted,
    encode_ack_payload,
    encode_frame,
    encode_frame_header,
    encode_nack_payload,
    group_id,
    nack_reason_for_code,
    with_flags,
)

SRC = uuid.UUID("11111111-2222-4333-8444-555555555555")
DST = uuid.UUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
NET = uuid.UUID("6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f")
MAX = 1 << 20

# docs/protocol.md §2.4, example 1: DIRECT, ACK_REQUESTED, id 1, payload "hi".
DIRECT_HI = bytes.fromhex(
    "01100001000000000000000111111111222243338444555555555555aaaaaaaabbbb4ccc8dddeeeeeeeeeeee000000026869"
)


def test_direct_vector_encode_and_decode() -> None:
    frame = encode_frame(
        FrameType.DIRECT, message_id=1, source=SRC, destination=DST, payload=b"hi", flags=Flags.ACK_REQUESTED
    )
    assert frame == DIRECT_HI
    view = decode_frame_untrusted(DIRECT_HI, max_payload=MAX)
    assert (view.version, view.type, view.flags, view.message_id) == (1, 0x10, 1, 1)
    assert view.source_uuid == SRC
    assert view.destination_uuid == DST
    assert view.payload_length == 2
    assert bytes(view.payload) == b"hi"
    assert view.is_data


def test_view_keeps_the_received_object() -> None:
    payload = b"x" * 1000
    frame = encode_frame(FrameType.BROADCAST, message_id=7, source=SRC, destination=NET, payload=payload)
    view = decode_frame_untrusted(frame, max_payload=MAX)
    assert view.raw is frame  # the router forwards this very object
    assert view.payload.obj is frame  # the payload is a view into it, not a copy


def test_header_layout_is_48_bytes_big_endian() -> None:
    header = encode_frame_header(
        FrameType.ANYCAST,
        message_id=0x0102030405060708,
        source=SRC.bytes,
        destination=capability_id("speaker"),
        payload_length=0x0A0B0C0D,
        flags=Flags.DURABLE | (AnycastPolicy.LEAST_OUTSTANDING << 8),
    )
    assert len(header) == HEADER_BYTES == 48
    assert header[:4] == bytes([1, 0x13, 0x02, 0x02])
    assert header[4:12] == bytes(range(1, 9))
    assert header[44:48] == bytes([0x0A, 0x0B, 0x0C, 0x0D])


def test_anycast_policy_bits() -> None:
    for policy in AnycastPolicy:
        frame = encode_frame(
            FrameType.ANYCAST, message_id=1, source=SRC, destination=capability_id("tts"), flags=policy << 8
        )
        assert decode_frame_untrusted(frame, max_payload=MAX).anycast_policy == policy


def corrupt(frame: bytes, offset: int, data: bytes) -> bytes:
    return frame[:offset] + data + frame[offset + len(data) :]


@pytest.mark.parametrize(
    ("frame", "hint"),
    [
        (DIRECT_HI[:47], NackReason.BAD_FRAME),
        (corrupt(DIRECT_HI, 0, b"\x02"), NackReason.UNSUPPORTED_VERSION),
        (corrupt(DIRECT_HI, 1, b"\x7f"), NackReason.BAD_FRAME),  # unknown type
        (corrupt(DIRECT_HI, 1, b"\x0e"), NackReason.BAD_FRAME),  # after the last control type
        (corrupt(DIRECT_HI, 2, b"\x80\x00"), NackReason.BAD_FRAME),  # undefined flag bit
        (corrupt(DIRECT_HI, 2, b"\x01\x00"), NackReason.BAD_FRAME),  # policy on a DIRECT frame
        (corrupt(DIRECT_HI, 44, b"\x00\x00\x00\x03"), NackReason.BAD_FRAME),  # length too big
        (DIRECT_HI + b"!", NackReason.BAD_FRAME),  # trailing junk
    ],
)
def test_bad_headers(frame: bytes, hint: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_frame_untrusted(frame, max_payload=MAX)
    assert info.value.hint == hint


def test_policy_3_is_refused_on_anycast() -> None:
    frame = encode_frame(FrameType.ANYCAST, message_id=1, source=SRC, destination=ZERO_ID)
    with pytest.raises(DecodeError):
        decode_frame_untrusted(corrupt(frame, 2, b"\x03\x00"), max_payload=MAX)


def test_size_limits_data_and_control() -> None:
    frame = encode_frame(FrameType.DIRECT, message_id=1, source=SRC, destination=DST, payload=b"x" * 100)
    assert decode_frame_untrusted(frame, max_payload=100).payload_length == 100
    with pytest.raises(DecodeError) as info:
        decode_frame_untrusted(frame, max_payload=99)
    assert info.value.hint == NackReason.TOO_LARGE
    control = encode_frame(FrameType.HEARTBEAT, message_id=1, source=SRC, payload=b" " * 65537)
    with pytest.raises(DecodeError) as info:
        decode_frame_untrusted(control, max_payload=1 << 30)
    assert info.value.hint == NackReason.TOO_LARGE
    lock = encode_frame(0x20, message_id=1, source=SRC, payload=b"{}")
    assert decode_frame_untrusted(lock, max_payload=0).type == 0x20


def test_encode_refuses_bad_values() -> None:
    with pytest.raises(EncodeError):
        encode_frame(0x7F, message_id=1, source=SRC)
    with pytest.raises(EncodeError):
        encode_frame(FrameType.DIRECT, message_id=-1, source=SRC)
    with pytest.raises(EncodeError):
        encode_frame(FrameType.DIRECT, message_id=1 << 64, source=SRC)
    with pytest.raises(EncodeError):
        encode_frame(FrameType.DIRECT, message_id=1, source=b"short")
    with pytest.raises(EncodeError):
        encode_frame(FrameType.DIRECT, message_id=1, source=SRC, flags=0x8000)


def test_with_flags_marks_redelivery() -> None:
    again = with_flags(DIRECT_HI, Flags.ACK_REQUESTED | Flags.DURABLE | Flags.REDELIVERED)
    assert again[2:4] == b"\x00\x07"
    assert again[:2] == DIRECT_HI[:2] and again[4:] == DIRECT_HI[4:]
    with pytest.raises(EncodeError):
        with_flags(DIRECT_HI, 0x1000)


def test_ack_payload() -> None:
    assert encode_ack_payload(AckStatus.QUEUED, 3) == bytes.fromhex("02000003")
    assert decode_ack_untrusted(bytes.fromhex("0100ffff")) == (AckStatus.DELIVERED, 65535)
    for bad in (b"", bytes.fromhex("04000001"), bytes.fromhex("01010001"), bytes.fromhex("0100000100")):
        with pytest.raises(DecodeError):
            decode_ack_untrusted(bad)
    with pytest.raises(EncodeError):
        encode_ack_payload(AckStatus.DELIVERED, 65536)


def test_nack_payload() -> None:
    raw = encode_nack_payload(NackReason.QUEUE_FULL, "queue of 7a… is full")
    assert raw[:2] == b"\x00\x04"
    assert decode_nack_untrusted(raw) == (4, "queue of 7a… is full")
    assert decode_nack_untrusted(b"\x03\xe8") == (1000, "")  # an unknown reason from a newer node
    long = encode_nack_payload(NackReason.BAD_FRAME, "é" * 1000)
    assert len(long) <= 2 + 1024
    for bad in (b"\x00", b"\x00\x00", b"\x00\x01\xff", b"\x00\x01" + b"x" * 1025):
        with pytest.raises(DecodeError):
            decode_nack_untrusted(bad)


def test_nack_slugs_match_node_errors() -> None:
    from node import errors

    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.NodeError)
    }
    for code in codes:
        reason = nack_reason_for_code(code)
        assert NACK_SLUGS[reason] == code  # every node error has a reason with its exact slug
    assert nack_reason_for_code("no-such-code") == NackReason.INTERNAL
    assert len(set(NACK_SLUGS.values())) == len(NACK_SLUGS)
    assert set(NACK_SLUGS) == set(NackReason)


def test_derived_id_vectors() -> None:
    # Test vectors of docs/protocol.md §2.3, recomputed from the definition.
    assert (
        group_id(NET, "kitchen") == hashlib.sha256(b"asgard/group\0" + NET.bytes + b"kitchen").digest()[:16]
    )
    assert group_id(NET, "kitchen").hex() == "8d2473da756cc785f0c72fc35de6adfb"
    assert capability_id("speaker").hex() == "a787633092eea5cc2b0e50c7e9f5eac9"
    assert capability_id("tts").hex() == "e72efe4c5d855fcfcff7ec1300430cef"
    assert group_id(NET, "Kitchen") != group_id(NET, "kitchen")
    with pytest.raises(EncodeError):
        capability_id("")
    with pytest.raises(EncodeError):
        group_id(NET, "x" * 256)


ids = st.binary(min_size=16, max_size=16)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([int(t) for t in FrameType] + [0x20, 0x2F]),
    st.integers(0, (1 << 64) - 1),
    ids,
    ids,
    st.binary(max_size=2000),
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]),
)
def test_roundtrip(ftype: int, message_id: int, src: bytes, dst: bytes, payload: bytes, flags: int) -> None:
    frame = encode_frame(
        ftype, message_id=message_id, source=src, destination=dst, payload=payload, flags=flags
    )
    view = decode_frame_untrusted(frame, max_payload=MAX)
    assert (view.type, view.message_id, view.source, view.destination, view.flags) == (
        ftype,
        message_id,
        src,
        dst,
        flags,
    )
    assert bytes(view.payload) == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 300))
def test_random_bytes_raise_only_decode_error(data: bytes, max_payload: int) -> None:
    for buf in (data, struct.pack("!BB", 1, 0x10) + data):
        try:
            decode_frame_untrusted(buf, max_payload=max_payload)
        except DecodeError as exc:
            hint = exc.hint
            assert hint in set(NackReason)
