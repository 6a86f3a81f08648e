"""StatusTracker: pure transitions with explicit `now`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.registry import INACTIVE, OFFLINE, ONLINE, StatusChange, StatusTracker


def tracker() -> StatusTracker:
    return StatusTracker(interval_s=10.0, inactive_after=3, offline_after=6)


def test_online_inactive_offline_on_schedule() -> None:
    t = tracker()
    t.track("d", last_seen=100.0, status=ONLINE)
    assert t.next_deadline() == 130.0
    assert t.advance(129.9) == []
    assert t.advance(130.0) == [StatusChange("d", ONLINE, INACTIVE, 130.0)]
    assert t.next_deadline() == 160.0
    assert t.advance(160.0) == [StatusChange("d", INACTIVE, OFFLINE, 160.0)]
    assert t.next_deadline() is None


def test_heartbeat_resets_and_reports_return_to_online() -> None:
    t = tracker()
    t.track("d", 0.0, ONLINE)
    assert t.heartbeat("d", 20.0) is None
    assert t.advance(30.0) == []  # the old deadline is stale
    assert t.advance(50.0) == [StatusChange("d", ONLINE, INACTIVE, 50.0)]
    assert t.heartbeat("d", 55.0) == StatusChange("d", INACTIVE, ONLINE, 55.0)
    assert t.status("d") == ONLINE


def test_long_silence_goes_straight_to_offline() -> None:
    t = tracker()
    t.track("d", 0.0, ONLINE)
    assert t.advance(1000.0) == [StatusChange("d", ONLINE, OFFLINE, 60.0)]


def test_reconfigure_applies_to_every_device() -> None:
    t = tracker()
    t.track("a", 0.0, ONLINE)
    t.track("b", 5.0, ONLINE)
    t.reconfigure(interval_s=1.0, inactive_after=2, offline_after=4)
    assert [c.device_id for c in t.advance(7.0)] == ["a", "b"]


def test_forget_and_unknown_devices() -> None:
    t = tracker()
    t.track("d", 0.0, ONLINE)
    t.forget("d")
    assert t.advance(1e9) == []
    assert t.status("d") is None
    assert t.heartbeat("new", 5.0) is None
    assert t.status("new") == ONLINE


def test_invalid_thresholds() -> None:
    with pytest.raises(ValueError, match="inactive_after"):
        StatusTracker(10.0, 5, 5)


@given(
    beats=st.lists(st.tuples(st.integers(0, 4), st.floats(0, 500, allow_nan=False)), max_size=60),
    end=st.floats(0, 1000, allow_nan=False),
)
def test_status_always_matches_time_since_last_heartbeat(beats: list[tuple[int, float]], end: float) -> None:
    """Whatever the order of heartbeats and sweeps, the status equals the rule applied to last_seen."""
    t = tracker()
    last: dict[str, float] = {}
    now = 0.0
    for device, at in sorted(beats, key=lambda b: b[1]):
        now = at
        t.advance(now)
        t.heartbeat(str(device), now)
        last[str(device)] = now
    now = max(now, end)
    t.advance(now)
    for device, seen in last.items():
        elapsed = now - seen
        expected = OFFLINE if elapsed >= 60 else INACTIVE if elapsed >= 30 else ONLINE
        assert t.status(device) == expected
