"""Control messages: field validation, round trips, byte-exact examples, hostile JSON."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import DecodeError, EncodeError
from wire.device import (
    ZERO_ID,
    AckMessage,
    AckStatus,
    Delivered,
    Event,
    FrameType,
    Heartbeat,
    Hello,
    Join,
    Leave,
    LockOp,
    NackMessage,
    NackReason,
    Register,
    Registered,
    Subscribe,
    Unsubscribe,
    Welcome,
    decode_control_untrusted,
    decode_frame_untrusted,
    encode_ack_frame,
    encode_control,
    encode_frame,
    encode_nack_frame,
)

DEV = uuid.UUID("11111111-2222-4333-8444-555555555555")
NET = uuid.UUID("6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f")

EXAMPLES = [
    Hello(token="asg_dev_example", client="demo/1.0"),
    Welcome(
        node="asgard", session_id="s-1", heartbeat_interval_s=30.0, max_payload_bytes=1048576, device_id=DEV
    ),
    Register(
        device_id=DEV,
        network_id=NET,
        name="kitchen speaker",
        world_type="physical",
        capabilities=("speaker", "tts"),
        hardware_spec={"ram_mb": 512},
    ),
    Registered(device_id=DEV, network_id=NET, queued=2, replaced_session=False),
    Heartbeat(status="active"),
    Heartbeat(),
    Join(network_id=NET, group="kitchen"),
    Leave(network_id=NET, group="kitchen"),
    Subscribe(network_id=NET),
    Unsubscribe(devices=(DEV,)),
    Event(event="status", device_id=DEV, status="offline", at=1764000000.5, network_id=NET),
    AckMessage(AckStatus.DELIVERED, 1),
    NackMessage(NackReason.UNKNOWN_DEVICE, "no such device"),
    Delivered(),
    LockOp(0x20, {"resource": "printer"}),
]


def roundtrip(message, **kw):  # type: ignore[no-untyped-def]
    frame = encode_control(message, message_id=9, source=DEV, **kw)
    view = decode_frame_untrusted(frame, max_payload=0)
    return view, decode_control_untrusted(view)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_control_type_round_trips(message) -> None:  # type: ignore[no-untyped-def]
    view, decoded = roundtrip(message)
    assert decoded == message
    assert view.message_id == 9
    assert view.source == DEV.bytes
    assert view.destination == ZERO_ID
    assert not view.is_data


def test_covers_every_control_type() -> None:
    seen = {roundtrip(m)[0].type for m in EXAMPLES}
    assert {t for t in FrameType if t < 0x10} <= seen


def test_hello_bytes_are_compact_json() -> None:
    frame = encode_control(Hello(token="asg_x"), message_id=1, source=ZERO_ID)
    assert frame[48:] == b'{"token":"asg_x"}'
    assert frame[:4] == bytes.fromhex("01010000")


def test_ack_and_delivered_bytes() -> None:
    ack = encode_control(AckMessage(AckStatus.QUEUED, 1), message_id=5, destination=DEV)
    assert ack.hex() == ("010600000000000000000005" + "00" * 16 + DEV.hex + "0000000402000001")
    assert encode_ack_frame(5, DEV.bytes, AckStatus.QUEUED, 1) == ack
    nack = encode_control(NackMessage(NackReason.QUEUE_FULL, "full"), message_id=6, destination=DEV)
    assert encode_nack_frame(6, DEV.bytes, NackReason.QUEUE_FULL, "full") == nack
    with pytest.raises(EncodeError):
        encode_ack_frame(5, b"short", AckStatus.QUEUED)
    delivered = encode_control(Delivered(), message_id=5, source=DEV, destination=NET)
    assert len(delivered) == 48


def frame_with(ftype: int, payload: bytes) -> bytes:
    return encode_frame(ftype, message_id=1, source=DEV, payload=payload)


@pytest.mark.parametrize(
    ("ftype", "payload", "hint"),
    [
        (FrameType.HELLO, b"", NackReason.BAD_FRAME),
        (FrameType.HELLO, b"[]", NackReason.BAD_FRAME),
        (FrameType.HELLO, b"\xff", NackReason.BAD_FRAME),
        (FrameType.HELLO, b'{"token":"a","token":"b"}', NackReason.BAD_FRAME),
        (FrameType.HELLO, b'{"token":NaN}', NackReason.BAD_FRAME),
        (FrameType.HELLO, b"[" * 30000 + b"]" * 30000, NackReason.BAD_FRAME),
        (FrameType.HELLO, b"{}", NackReason.INVALID_INPUT),
        (FrameType.HELLO, b'{"token":""}', NackReason.INVALID_INPUT),
        (FrameType.HELLO, b'{"token":5}', NackReason.INVALID_INPUT),
        (FrameType.REGISTER, b'{"device_id":"not-a-uuid"}', NackReason.INVALID_INPUT),
        (
            FrameType.JOIN,
            b'{"network_id":"6F1C2D3E4A5B4C6D8E7F9A0B1C2D3E4F","group":"g"}',
            NackReason.INVALID_INPUT,
        ),
        (
            FrameType.REGISTERED,
            json.dumps(
                {"device_id": str(DEV), "network_id": str(NET), "queued": True, "replaced_session": False}
            ).encode(),
            NackReason.INVALID_INPUT,
        ),
        (
            FrameType.WELCOME,
            json.dumps(
                {"node": "n", "session_id": "s", "heartbeat_interval_s": 0, "max_payload_bytes": 1}
            ).encode(),
            NackReason.INVALID_INPUT,
        ),
        (FrameType.SUBSCRIBE, json.dumps({"devices": [str(DEV)] * 1001}).encode(), NackReason.INVALID_INPUT),
        (FrameType.ACK, b"\x01\x00\x00", NackReason.BAD_FRAME),
        (FrameType.NACK, b"\x00\x00", NackReason.BAD_FRAME),
        (FrameType.DELIVERED, b"x", NackReason.BAD_FRAME),
        (FrameType.DIRECT, b"{}", NackReason.BAD_FRAME),  # data, not control
    ],
)
def test_invalid_control_payloads(ftype: int, payload: bytes, hint: int) -> None:
    view = decode_frame_untrusted(frame_with(ftype, payload), max_payload=1 << 20)
    with pytest.raises(DecodeError) as info:
        decode_control_untrusted(view)
    assert info.value.hint == hint


def test_unknown_fields_are_ignored_and_uuid_case_is_free() -> None:
    payload = json.dumps({"network_id": str(NET).upper(), "group": "g", "future": 1}).encode()
    decoded = decode_control_untrusted(
        decode_frame_untrusted(frame_with(FrameType.JOIN, payload), max_payload=0)
    )
    assert decoded == Join(network_id=NET, group="g")


def test_encode_validates_fields() -> None:
    with pytest.raises(EncodeError):
        encode_control(Hello(token=""), message_id=1)
    with pytest.raises(EncodeError):
        encode_control(Join(network_id=NET, group="x" * 300), message_id=1)
    with pytest.raises(EncodeError):
        encode_control(LockOp(0x10, {}), message_id=1)
    with pytest.raises(EncodeError):
        encode_control(LockOp(0x21, {"x": float("nan")}), message_id=1)
    with pytest.raises(EncodeError):
        encode_control(LockOp(0x21, {"x": "y" * 70000}), message_id=1)


names = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 128)
uuids = st.uuids()


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.builds(Hello, token=names, client=st.none() | names),
        st.builds(Join, network_id=uuids, group=names),
        st.builds(Leave, network_id=uuids, group=names),
        st.builds(
            Register,
            device_id=uuids,
            network_id=uuids,
            name=names,
            world_type=st.sampled_from(["physical", "virtual"]),
            capabilities=st.none() | st.lists(names, max_size=5).map(tuple),
            hardware_spec=st.none() | st.dictionaries(names, st.integers(-1000, 1000), max_size=4),
        ),
        st.builds(
            Subscribe,
            network_id=st.none() | uuids,
            devices=st.none() | st.lists(uuids, max_size=5).map(tuple),
        ),
        st.builds(
            Event, event=st.just("status"), device_id=uuids, status=st.just("active"), at=st.floats(0, 1e10)
        ),
        st.builds(AckMessage, st.sampled_from(list(AckStatus)), st.integers(0, 65535)),
        st.builds(NackMessage, st.sampled_from(list(NackReason)), st.text(max_size=50)),
    )
)
def test_hypothesis_round_trip(message) -> None:  # type: ignore[no-untyped-def]
    assert roundtrip(message)[1] == message


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([t for t in FrameType if t < 0x10] + [0x20]), st.binary(max_size=300))
def test_random_payloads_raise_only_decode_error(ftype: int, payload: bytes) -> None:
    view = decode_frame_untrusted(frame_with(ftype, payload), max_payload=0)
    try:
        decode_control_untrusted(view)
    except DecodeError as exc:
        hint = exc.hint
        assert hint in (NackReason.BAD_FRAME, NackReason.INVALID_INPUT)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([FrameType.REGISTER, FrameType.EVENT, FrameType.WELCOME]),
    st.dictionaries(
        st.sampled_from(
            [
                "device_id",
                "network_id",
                "name",
                "world_type",
                "capabilities",
                "hardware_spec",
                "event",
                "status",
                "at",
                "node",
                "session_id",
                "heartbeat_interval_s",
                "max_payload_bytes",
            ]
        ),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40)
        | st.lists(st.text(max_size=5), max_size=3),
    ),
)
def test_random_json_objects_raise_only_decode_error(ftype: int, obj: dict) -> None:  # type: ignore[type-arg]
    view = decode_frame_untrusted(frame_with(ftype, json.dumps(obj).encode()), max_payload=0)
    try:
        decode_control_untrusted(view)
    except DecodeError as exc:
        hint = exc.hint
        assert hint == NackReason.INVALID_INPUT
