"""Per-link bookkeeping: reconnect backoff, ping/RTT health, duplicate-link choice, fan-out cover.
Pure: the caller passes `now` (Trio seconds) and, for jitter, a `random.Random`.

Theory of operation
-------------------
* **Backoff**: after a failed or lost link the dialer waits `d/2 + uniform(0, d/2)` with
  `d = min(max, initial * 2**attempt)` ("equal jitter": never less than half the step, so a
  restarting cluster does not hammer a peer; never synchronised, so peers do not retry in step).
  A link that completed its handshake resets the attempt count.
* **Health**: a link sends PING every `ping_interval_s`; the PONG gives the round-trip time (last,
  minimum, and an EWMA with weight 1/8 as TCP's SRTT, RFC 6298 §2). Any message counts as a sign
  of life; a link silent for `dead_after_s` is dead and closed.
* **Duplicate links**: when two nodes dial each other at once, each ends up with two links. Both
  keep the one dialled by the node with the smaller id, so both choose the same one.
* **Fan-out cover**: a broadcast or multicast frame carries the set of nodes that already have or
  are being sent a copy. A node forwards it only to linked peers outside that set and adds them
  to it, so in a full mesh every node gets exactly one copy, and in a partial mesh the copies
  still reach every connected node; a bounded recently-seen cache drops any copy that arrives
  twice anyway.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

EWMA_WEIGHT = 0.125
MAX_OUTSTANDING_PINGS = 64


class Backoff:
    """Exponential backoff with equal jitter."""

    __slots__ = ("attempt", "initial_s", "max_s", "rng")

    def __init__(self, initial_s: float, max_s: float, rng: random.Random) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the step up to the maximum."""
        step = min(self.max_s, self.initial_s * float(2 ** min(self.attempt, 62)))
        self.attempt += 1
        return step / 2 + self.rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0

    def reshape(self, initial_s: float, max_s: float) -> None:
        self.initial_s, self.max_s = initial_s, max_s


@dataclass(slots=True)
class LinkHealth:
    """Liveness and round-trip time of one link."""

    last_heard: float
    next_ping_id: int = 1
    outstanding: dict[int, float] = field(default_factory=dict)
    rtt_last_s: float | None = None
    rtt_min_s: float | None = None
    rtt_ewma_s: float | None = None
    pings_sent: int = 0
    pongs: int = 0

    def heard(self, now: float) -> None:
        """Something arrived on the link."""
        self.last_heard = max(self.last_heard, now)

    def ping(self, now: float) -> int:
        """Record a PING sent now; returns its id."""
        ping_id = self.next_ping_id
        self.next_ping_id += 1
        self.outstanding[ping_id] = now
        if len(self.outstanding) > MAX_OUTSTANDING_PINGS:  # never answered: forget the oldest
            self.outstanding.pop(next(iter(self.outstanding)))
        self.pings_sent += 1
        return ping_id

    def pong(self, ping_id: int, now: float) -> float | None:
        """A PONG arrived; returns the round trip (None for an unknown or stale id)."""
        self.heard(now)
        sent = self.outstanding.pop(ping_id, None)
        if sent is None:
            return None
        rtt = max(0.0, now - sent)
        self.pongs += 1
        self.rtt_last_s = rtt
        self.rtt_min_s = rtt if self.rtt_min_s is None else min(self.rtt_min_s, rtt)
        ewma = self.rtt_ewma_s
        self.rtt_ewma_s = rtt if ewma is None else ewma + EWMA_WEIGHT * (rtt - ewma)
        return rtt

    def dead(self, now: float, dead_after_s: float) -> bool:
        """True when nothing arrived for `dead_after_s`."""
        return now - self.last_heard >= dead_after_s

    def as_dict(self, now: float) -> dict[str, Any]:
        """For the cluster API and admin stats (milliseconds)."""
        return {
            "rtt_ms": _ms(self.rtt_ewma_s),
            "rtt_last_ms": _ms(self.rtt_last_s),
            "rtt_min_ms": _ms(self.rtt_min_s),
            "silent_s": round(max(0.0, now - self.last_heard), 3),
            "pings_sent": self.pings_sent,
            "pongs": self.pongs,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def keep_link_dialled_by(node_a: str, node_b: str) -> str:
    """Of two links between `node_a` and `node_b`, the one dialled by this node is kept."""
    return min(node_a, node_b)


def fan_out(me: str, linked: Iterable[str], covered: Iterable[str]) -> tuple[list[str], list[str]]:
    """(peers to forward to, the cover set to send with the copies)."""
    seen = set(covered)
    targets = sorted(p for p in set(linked) if p not in seen and p != me)
    return targets, sorted(seen | {me} | set(targets))


class RecentlySeen:
    """A bounded set of recently seen keys (oldest forgotten first)."""

    __slots__ = ("_keys", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """Remember `key`; False when it was already there."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._keys)
