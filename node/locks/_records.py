"""Internal records of the lock state (queued requests, resources) and small helpers."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from node.locks._types import AcquireRequest, Lease, WaiterView


@dataclass(eq=False, slots=True)
class Waiter:
    """A queued request (internal; `WaiterView` is the public picture)."""

    id: int
    req: AcquireRequest
    enqueued_at: float
    deadline: float
    effective: int
    next_aging: float = math.inf
    aged_steps: int = 0
    holder_blockers: tuple[str, ...] = ()
    queue_blockers: tuple[str, ...] = ()

    def blockers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.holder_blockers, *self.queue_blockers)))


@dataclass(eq=False, slots=True)
class Resource:
    name: str
    holders: dict[int, Lease] = field(default_factory=dict)
    queue: list[Waiter] = field(default_factory=list)
    grant_seq: dict[int, int] = field(default_factory=dict)


STAT_KEYS = (
    "grants",
    "queued",
    "expiries",
    "preemptions",
    "deadlocks",
    "refusals_timeout",
    "refusals_deadlock",
    "refusals_cancelled",
    "refusals_session_ended",
    "releases_released",
    "releases_session_ended",
    "releases_admin",
    "releases_abandoned",
)


_E = TypeVar("_E", tuple[float, str, int], tuple[float, int], tuple[float, str])


def top(heap: list[_E], valid: Callable[[_E], bool]) -> float:
    """The earliest valid deadline in `heap`, dropping stale entries (lazy deletion)."""
    while heap and not valid(heap[0]):
        heapq.heappop(heap)
    return heap[0][0] if heap else math.inf


def discard(index: dict[str, dict[int, None]], key: str, wid: int) -> None:
    ids = index[key]
    del ids[wid]
    if not ids:
        del index[key]


def service_order(waiter: Waiter) -> tuple[int, int]:
    return (-waiter.effective, waiter.id)


def waiter_view(w: Waiter) -> WaiterView:
    r = w.req
    return WaiterView(
        w.id,
        r.resource,
        r.owner,
        r.session,
        r.mode,
        r.priority,
        w.effective,
        w.enqueued_at,
        w.deadline,
    )
