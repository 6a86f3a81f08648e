"""Heartbeat-driven device status (pure; the caller passes `now`).

Theory of operation
-------------------
States: ``online`` -> ``inactive`` -> ``offline``. A heartbeat (or registration) at time t puts a
device in ``online`` with last_seen = t. With heartbeat interval I, the device becomes ``inactive``
at t + N*I (N missed heartbeats) and ``offline`` at t + M*I (M > N). Any heartbeat returns it to
``online``.

Deadlines live in a min-heap of (deadline, device, generation). Each heartbeat bumps the device's
generation, so an older heap entry is recognised as stale when it surfaces and skipped (lazy
deletion: O(log n) per heartbeat, no heap search). Offline devices leave the heap until they are
seen again. Changing the thresholds rebuilds the heap from the last_seen times, so a live
reconfiguration applies to every device at once.

Invariant: for every tracked device whose status is not offline, the heap holds exactly one
non-stale entry, at the time of its next transition.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

ONLINE = "online"
INACTIVE = "inactive"
OFFLINE = "offline"
STATUSES = (ONLINE, INACTIVE, OFFLINE)


@dataclass(frozen=True, slots=True)
class StatusChange:
    device_id: str
    old: str
    new: str
    at: float


@dataclass(slots=True)
class _Entry:
    last_seen: float
    status: str
    generation: int


class StatusTracker:
    """Computes status transitions from heartbeats and the passage of time."""

    def __init__(self, interval_s: float, inactive_after: int, offline_after: int) -> None:
        if not 0 < inactive_after < offline_after:
            raise ValueError("need 0 < inactive_after < offline_after")
        self._interval = interval_s
        self._inactive_after = inactive_after
        self._offline_after = offline_after
        self._devices: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str, int]] = []

    def reconfigure(self, interval_s: float, inactive_after: int, offline_after: int) -> None:
        """New thresholds for every device (the next `advance` applies them)."""
        if not 0 < inactive_after < offline_after:
            raise ValueError("need 0 < inactive_after < offline_after")
        self._interval, self._inactive_after, self._offline_after = (
            interval_s,
            inactive_after,
            offline_after,
        )
        self._heap = []
        for device_id, entry in self._devices.items():
            entry.generation += 1
            self._schedule(device_id, entry)

    def track(self, device_id: str, last_seen: float, status: str) -> None:
        """Start tracking a device as stored (at start-up or on registration)."""
        old = self._devices.get(device_id)
        entry = _Entry(last_seen, status, old.generation + 1 if old else 0)
        self._devices[device_id] = entry
        self._schedule(device_id, entry)

    def forget(self, device_id: str) -> None:
        self._devices.pop(device_id, None)

    def status(self, device_id: str) -> str | None:
        entry = self._devices.get(device_id)
        return entry.status if entry else None

    def heartbeat(self, device_id: str, now: float) -> StatusChange | None:
        """Record a sign of life; returns the change when the device was not online."""
        entry = self._devices.get(device_id)
        if entry is None:
            self.track(device_id, now, ONLINE)
            return None
        old = entry.status
        entry.last_seen = max(entry.last_seen, now)
        entry.status = ONLINE
        entry.generation += 1
        self._schedule(device_id, entry)
        return None if old == ONLINE else StatusChange(device_id, old, ONLINE, now)

    def next_deadline(self) -> float | None:
        """When `advance` next has something to do (stale heap entries may make it early)."""
        return self._heap[0][0] if self._heap else None

    def advance(self, now: float) -> list[StatusChange]:
        """Apply every transition due at or before `now`, oldest first."""
        changes = []
        while self._heap and self._heap[0][0] <= now:
            _, device_id, generation = heapq.heappop(self._heap)
            entry = self._devices.get(device_id)
            if entry is None or entry.generation != generation:
                continue
            new = self._status_at(entry.last_seen, now)
            if new != entry.status:
                missed = self._offline_after if new == OFFLINE else self._inactive_after
                at = entry.last_seen + missed * self._interval
                changes.append(StatusChange(device_id, entry.status, new, at))
                entry.status = new
            self._schedule(device_id, entry)
        return changes

    def _status_at(self, last_seen: float, now: float) -> str:
        elapsed = now - last_seen
        if elapsed >= self._offline_after * self._interval:
            return OFFLINE
        if elapsed >= self._inactive_after * self._interval:
            return INACTIVE
        return ONLINE

    def _schedule(self, device_id: str, entry: _Entry) -> None:
        if entry.status == ONLINE:
            due = entry.last_seen + self._inactive_after * self._interval
        elif entry.status == INACTIVE:
            due = entry.last_seen + self._offline_after * self._interval
        else:
            return
        heapq.heappush(self._heap, (due, device_id, entry.generation))

    def __len__(self) -> int:
        return len(self._devices)
