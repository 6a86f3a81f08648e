"""The router's codec gives byte-for-byte what betterproto2 gives, and judges odd input the same."""

from __future__ import annotations

from typing import Any

import pytest
from grpclib.encoding.proto import ProtoCodec
from hypothesis import given
from hypothesis import strategies as st

from node.rpc._codec import RouterCodec, decode_frame_message_canonical
from protos.gen.asgard import v1 as pb

ROUTER, REFERENCE = RouterCodec(), ProtoCodec()
U64 = st.integers(min_value=0, max_value=2**64 - 1)
U32 = st.integers(min_value=0, max_value=2**32 - 1)


@given(st.binary(max_size=300))
def test_frame_messages_encode_and_decode_as_betterproto_does(frame: bytes) -> None:
    for kind in (pb.ConnectFrame, pb.SendRequest):
        wire = REFERENCE.encode(kind(frame=frame), kind)
        if kind is pb.ConnectFrame:
            assert ROUTER.encode(kind(frame=frame), kind) == wire
        decoded = ROUTER.decode(wire, kind)
        assert type(decoded) is kind
        assert decoded.frame == frame


@given(U64, st.sampled_from(list(pb.DeliveryStatus)), U32)
def test_send_acks_encode_as_betterproto_does(message_id: int, status: Any, recipients: int) -> None:
    ack = pb.SendAck(message_id=message_id, status=status, recipients=recipients)
    assert ROUTER.encode(ack, pb.SendAck) == REFERENCE.encode(ack, pb.SendAck)


@given(st.binary(max_size=64))
def test_any_input_decodes_as_betterproto_decodes_it_or_fails_alike(data: bytes) -> None:
    for kind in (pb.ConnectFrame, pb.SendRequest):
        try:
            expected = REFERENCE.decode(data, kind)
        except Exception as exc:
            with pytest.raises(type(exc)):
                ROUTER.decode(data, kind)
            continue
        assert ROUTER.decode(data, kind) == expected


def test_only_the_canonical_form_takes_the_direct_path() -> None:
    assert decode_frame_message_canonical(b"\x0a\x03abc") == b"abc"
    assert decode_frame_message_canonical(b"\x0a\x83\x00abc") == b"abc"  # a non-minimal varint
    assert decode_frame_message_canonical(b"") is None  # empty message: frame = b""
    assert decode_frame_message_canonical(b"\x0a\x03ab") is None  # truncated
    assert decode_frame_message_canonical(b"\x0a\x01a\x0a\x01b") is None  # field repeated
    assert decode_frame_message_canonical(b"\x0a\x01a\x10\x01") is None  # another field after
    assert decode_frame_message_canonical(b"\x12\x01a") is None  # another field number
    assert decode_frame_message_canonical(b"\x0a" + b"\xff" * 11) is None  # runaway varint
    # The forms left to betterproto2 still decode as it says: last value wins, unknown skipped.
    assert ROUTER.decode(b"\x0a\x01a\x0a\x01b", pb.ConnectFrame).frame == b"b"
    assert ROUTER.decode(b"\x0a\x01a\x10\x01", pb.ConnectFrame).frame == b"a"


def test_other_message_types_go_to_the_proto_codec() -> None:
    request = pb.GetDeviceRequest(device_id="d")
    wire = ROUTER.encode(request, pb.GetDeviceRequest)
    assert wire == REFERENCE.encode(request, pb.GetDeviceRequest)
    assert ROUTER.decode(wire, pb.GetDeviceRequest) == request
    with pytest.raises(TypeError):
        ROUTER.encode(pb.ConnectFrame(frame=b"x"), pb.SendAck)
