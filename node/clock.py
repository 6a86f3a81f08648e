"""Wall-clock time derived from Trio's clock, so `autojump_clock` moves timestamps in tests too."""

from __future__ import annotations

import time

import trio


class WallClock:
    """`now()` is Unix time that advances exactly with `trio.current_time()`.

    Create it inside `trio.run`. Stored timestamps (last_seen, registered_at, lease deadlines) are Unix
    seconds; deadlines are computed from the same clock, so tests that jump Trio's clock see stored
    times jump with it.
    """

    def __init__(self, offset: float | None = None) -> None:
        self._offset = time.time() - trio.current_time() if offset is None else offset

    def now(self) -> float:
        return trio.current_time() + self._offset

    def to_trio(self, wall: float) -> float:
        """The Trio-clock time at which the wall clock will read `wall`."""
        return wall - self._offset
