"""Token-bucket rate limiting, keyed (per token, per client IP). Pure: callers pass `now`.

Each key has a bucket of `burst` tokens refilled at `rate` per second; a request takes one.
Idle buckets are forgotten oldest-first once `max_keys` is reached, so memory stays bounded
whatever the number of distinct clients (a forgotten bucket comes back full, which only errs
towards allowing a request that a perfect limiter would have refused).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until one request is allowed (0 when allowed)


class RateLimiter:
    """Many token buckets of one shape."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def reshape(self, rate: float, burst: int) -> None:
        """Apply new limits live; existing buckets keep their level, capped at the new burst."""
        self.rate, self.burst = rate, burst

    def take(self, key: str, now: float) -> Decision:
        level, last = self._buckets.pop(key, (float(self.burst), now))
        level = min(float(self.burst), level + max(0.0, now - last) * self.rate)
        allowed = level >= 1.0
        if allowed:
            level -= 1.0
        self._buckets[key] = (level, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        missing = self.burst - level
        return Decision(
            allowed=allowed,
            limit=self.burst,
            remaining=int(level),
            reset_s=math.ceil(missing / self.rate) if missing > 0 else 0,
            retry_after_s=0 if allowed else max(1, math.ceil((1.0 - level) / self.rate)),
        )

    def __len__(self) -> int:
        return len(self._buckets)
