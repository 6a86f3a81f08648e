"""Pure relay rules: phases and admission, the message rate bucket, Origin, heartbeat throttle."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.auth import Principal, Role
from node.relay.settings import RelaySettings
from node.relay.state import HeartbeatThrottle, MessageRate, Phase, admit, origin_allowed, reach_of
from wire.device import LOCK_TYPES, FrameType, NackReason


@pytest.mark.parametrize(
    ("phase", "ftype", "expected"),
    [
        (Phase.AWAITING_HELLO, FrameType.HELLO, None),
        (Phase.AWAITING_HELLO, FrameType.REGISTER, NackReason.UNAUTHENTICATED),
        (Phase.AWAITING_HELLO, FrameType.DIRECT, NackReason.UNAUTHENTICATED),
        (Phase.AUTHENTICATED, FrameType.HELLO, NackReason.INVALID_INPUT),
        (Phase.AUTHENTICATED, FrameType.REGISTER, None),
        (Phase.AUTHENTICATED, FrameType.SUBSCRIBE, None),
        (Phase.AUTHENTICATED, FrameType.DIRECT, NackReason.NOT_REGISTERED),
        (Phase.AUTHENTICATED, FrameType.HEARTBEAT, NackReason.NOT_REGISTERED),
        (Phase.AUTHENTICATED, FrameType.JOIN, NackReason.NOT_REGISTERED),
        (Phase.AUTHENTICATED, FrameType.DELIVERED, NackReason.NOT_REGISTERED),
        (Phase.REGISTERED, FrameType.REGISTER, None),
        (Phase.REGISTERED, FrameType.JOIN, None),
        (Phase.REGISTERED, FrameType.ACK, NackReason.BAD_FRAME),
        (Phase.REGISTERED, FrameType.EVENT, NackReason.BAD_FRAME),
        (Phase.AWAITING_HELLO, FrameType.WELCOME, NackReason.BAD_FRAME),
    ],
)
def test_admission_by_phase(phase: Phase, ftype: int, expected: NackReason | None) -> None:
    assert admit(phase, ftype) == expected


def test_lock_frames_need_a_registered_device() -> None:
    for ftype in LOCK_TYPES:
        assert admit(Phase.AUTHENTICATED, ftype) == NackReason.NOT_REGISTERED
        assert admit(Phase.REGISTERED, ftype) is None


def test_message_rate_allows_burst_then_rate() -> None:
    rate = MessageRate(10.0, 5, now=0.0)
    assert rate.take(5, 0.0)
    assert not rate.take(1, 0.0)
    assert not rate.take(2, 0.15)  # 1.5 tokens refilled
    assert rate.take(1, 0.15)
    assert rate.take(5, 100.0)  # refill caps at the burst
    assert not rate.take(1, 100.0)


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 1)), max_size=50))
def test_message_rate_never_exceeds_burst_plus_elapsed_rate(steps: list[tuple[int, float]]) -> None:
    rate, burst = 50.0, 30
    bucket = MessageRate(rate, burst, now=0.0)
    now = 0.0
    taken = 0
    for count, dt in steps:
        now += dt
        if bucket.take(count, now):
            taken += count
    assert taken <= burst + rate * now + 1e-6


def test_heartbeat_throttle() -> None:
    t = HeartbeatThrottle()
    assert t.due(0.0, 5.0)
    assert not t.due(4.9, 5.0)
    assert t.due(5.0, 5.0)


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, [], True),
        ("https://evil.example", [], False),
        ("https://home.example", ["https://home.example"], True),
        ("https://home.example/", ["https://home.example"], True),
        ("https://other.example", ["https://home.example"], False),
        ("https://any.example", ["*"], True),
    ],
)
def test_origin_allow_list(origin: str | None, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(origin, allowed) is ok


def test_reach_of_principals() -> None:
    net = "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
    device = Principal("t", Role.DEVICE, device_id="x", networks=(net,))
    assert reach_of(device) == frozenset([bytes.fromhex(net.replace("-", ""))])
    assert reach_of(Principal("t", Role.SERVICE)) is None
    assert reach_of(Principal("t", Role.DEVICE, device_id="x")) == frozenset()


def test_settings_tie_the_websocket_message_limit_to_the_payload_limit() -> None:
    assert RelaySettings().websocket.max_message_bytes == (1 << 20) + 48
    s = RelaySettings.model_validate({"max_payload_bytes": 1000, "websocket": {"ping_interval_s": 5}})
    assert s.websocket.max_message_bytes == 1048
    assert s.websocket.ping_interval_s == 5
    with pytest.raises(ValueError, match="max_payload_bytes"):
        RelaySettings.model_validate({"max_payload_bytes": 1000, "websocket": {"max_message_bytes": 500}})
    with pytest.raises(ValueError, match="unknown"):
        RelaySettings.model_validate({"unknown": 1})
