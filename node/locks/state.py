"""The lock rules, pure: every call takes `now` and returns the events it caused.

Theory of operation
-------------------
A *resource* exists while it has holders or waiters. Its holders are either one EXCLUSIVE lease or
any number of SHARED leases. Its waiters form one queue in *service order*: effective priority
descending, then arrival (request id) ascending. After every change a *grant pass* walks the queue
from the head and grants each waiter that is compatible with the current holders, stopping at the
first one that is not. Consequences (the fairness rule):
  * waiters are served by priority, then FIFO;
  * a request is never granted past an earlier-served waiter it conflicts with, so a shared
    request does not overtake a waiting exclusive request of higher or equal priority, and a
    stream of low-priority shared requests cannot starve a waiting exclusive one;
  * a higher-priority request is placed ahead of lower-priority waiters (that is what priority
    means); with aging on, a waiter gains `aging_step` priority per `aging_interval_s` waited (up
    to `max_priority`), so it eventually ties with newcomers and then wins on arrival order.

Fencing tokens: each resource has a counter of the last token issued; every grant takes the next
value, so tokens strictly increase per resource in grant order. The counters are handed in at
start (from the journal) and never decrease.

Timers (all on the caller's monotonic clock): lease expiry, wait deadlines, the grace period after
a session ended, and aging steps. Every public call first applies every timer that is due at `now`,
so the state never acts on stale leases whatever the caller's timer latency. `next_deadline()`
tells the caller when to call `tick(now)`.

Deadlocks: a wait-for graph between owners (`_waitfor.WaitForGraph`), kept as a transitive
reduction: a waiter at the front of the queue waits for the owners of the holders it conflicts
with; a waiter behind waits for the conflicting waiters directly ahead of it (an exclusive waiter
for the waiter, or run of shared waiters, right before it; a shared waiter for the nearest
exclusive waiter ahead), and always for its own owner's conflicting holding. Edges follow
every change; a cycle is found when the edge that closes it is added, and broken at once by
`_deadlock.resolve` under the configured policy. Invariant after every call: the graph is acyclic.
Holders whose session has ended are left out: they wait for nothing and go when the grace period
ends, so they cannot be on a cycle (and a reconnected owner waiting for them is no self-wait).

Errors: a call that raises (NotFound, PermissionDenied, InvalidInput, ResourceExhausted) changes
nothing, but the timers it applied on entry are applied; their events would be lost with the
exception, so callers `tick(now)` first (LockService does).

Determinism: no randomness, no wall clock, no set iteration; same calls in, same events out.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterable, Mapping

from node.errors import InvalidInput, NotFound, PermissionDenied, ResourceExhausted
from node.locks import _deadlock, _edges
from node.locks._records import (
    STAT_KEYS,
    Resource,
    Waiter,
    discard,
    service_order,
    top,
    waiter_view,
)
from node.locks._types import (
    AcquireRequest,
    Lease,
    LockEvent,
    LockExpired,
    LockGranted,
    LockMode,
    LockQueued,
    LockRefreshed,
    LockRefused,
    LockReleased,
    RefusalReason,
    ReleaseCause,
    ResourceView,
    compatible,
)
from node.locks._waitfor import WaitForGraph
from node.locks.settings import LockSettings


class LockState:
    """All resources, holders, waiters, sessions and timers of one node."""

    def __init__(self, settings: LockSettings, counters: Mapping[str, int] | None = None) -> None:
        self.settings = settings
        self.resources: dict[str, Resource] = {}
        self.waiters: dict[int, Waiter] = {}
        self.graph: WaitForGraph[str] = WaitForGraph()
        self._counters: dict[str, int] = dict(counters or {})
        self._next_id = 1
        self._grant_seq = 0
        self._owner_waiters: dict[str, dict[int, None]] = {}
        self._session_waiters: dict[str, dict[int, None]] = {}
        self._session_holds: dict[str, dict[tuple[str, int], None]] = {}
        self._ending: dict[str, float] = {}
        self._lease_heap: list[tuple[float, str, int]] = []
        self._wait_heap: list[tuple[float, int]] = []
        self._grace_heap: list[tuple[float, str]] = []
        self._aging_heap: list[tuple[float, int]] = []
        self._dirty: dict[str, None] = {}
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    # -- start-up and settings ------------------------------------------------------------

    def restore(self, lease: Lease) -> None:
        """Re-install a lease loaded from the journal (before any other call)."""
        res = self.resources.setdefault(lease.resource, Resource(lease.resource))
        if any(not compatible(h.mode, lease.mode) for h in res.holders.values()):
            raise InvalidInput(f"restored lease conflicts on {lease.resource!r}")
        self._counters[lease.resource] = max(self._counters.get(lease.resource, 0), lease.token)
        self._add_holder(res, lease)

    def new_request_id(self) -> int:
        """Allocate a request id (for requests decided elsewhere, such as cluster locks)."""
        wid = self._next_id
        self._next_id += 1
        return wid

    def apply_settings(self, settings: LockSettings) -> None:
        """Use new live settings from now on (existing leases and waiters keep their terms)."""
        self.settings = settings

    # -- operations -------------------------------------------------------------------------

    def acquire(self, req: AcquireRequest, now: float) -> tuple[int, list[LockEvent]]:
        """Queue `req` and run a grant pass; the outcome for the returned id is in the events."""
        events: list[LockEvent] = []
        self._advance(now, events)
        if req.session in self._ending:
            raise InvalidInput(f"session {req.session!r} has ended")
        res = self.resources.get(req.resource)
        if res is None:
            if len(self.resources) >= self.settings.max_resources:
                raise ResourceExhausted("too many locked resources", limit=len(self.resources))
            res = self.resources[req.resource] = Resource(req.resource)
        elif len(res.queue) >= self.settings.max_waiters_per_resource:
            raise ResourceExhausted(f"too many waiters on {req.resource!r}")
        waiter = self._enqueue(res, req, now)
        self._grant_pass(res, now, events)
        if waiter.id in self.waiters:
            if req.wait_s <= 0:
                self._refuse(waiter, RefusalReason.TIMEOUT, events)
            else:
                position = res.queue.index(waiter)
                events.append(LockQueued(waiter.id, req.resource, req.owner, position))
                self.stats["queued"] += 1
        self._mark(res)
        self._settle(now, events)
        return waiter.id, events

    def cancel(self, request_id: int, now: float) -> list[LockEvent]:
        """The caller gave up waiting; no-op when the request already ended."""
        events: list[LockEvent] = []
        self._advance(now, events)
        waiter = self.waiters.get(request_id)
        if waiter is not None:
            self._refuse(waiter, RefusalReason.CANCELLED, events)
        self._settle(now, events)
        return events

    def release(self, resource: str, token: int, owner: str, now: float) -> list[LockEvent]:
        """Release a held lease; NotFound when it is not held (any more)."""
        events: list[LockEvent] = []
        self._advance(now, events)
        res, lease = self._held(resource, token)
        if lease.owner != owner:
            raise PermissionDenied(f"lock {resource!r}/{token} is held by another owner")
        self._end_hold(res, token, events, cause=ReleaseCause.RELEASED)
        self._settle(now, events)
        return events

    def abandon(self, resource: str, token: int, now: float) -> list[LockEvent]:
        """Release a grant whose caller never learnt of it; no-op when not held."""
        events: list[LockEvent] = []
        self._advance(now, events)
        res = self.resources.get(resource)
        if res is not None and token in res.holders:
            self._end_hold(res, token, events, cause=ReleaseCause.ABANDONED)
        self._settle(now, events)
        return events

    def refresh(
        self, resource: str, token: int, owner: str, lease_s: float, now: float
    ) -> tuple[Lease, list[LockEvent]]:
        """Extend a held lease to `now + lease_s`; NotFound when it is not held (any more)."""
        events: list[LockEvent] = []
        self._advance(now, events)
        res, lease = self._held(resource, token)
        if lease.owner != owner:
            raise PermissionDenied(f"lock {resource!r}/{token} is held by another owner")
        new = dataclasses.replace(lease, lease_s=lease_s, expires_at=now + lease_s)
        res.holders[token] = new
        heapq.heappush(self._lease_heap, (new.expires_at, resource, token))
        events.append(LockRefreshed(new))
        self._settle(now, events)
        return new, events

    def force_release(self, resource: str, token: int | None, now: float) -> list[LockEvent]:
        """Admin: release one lease, or every holder of the resource; NotFound when none."""
        events: list[LockEvent] = []
        self._advance(now, events)
        res = self.resources.get(resource)
        tokens = list(res.holders) if res is not None else []
        if token is not None:
            tokens = [t for t in tokens if t == token]
        if res is None or not tokens:
            raise NotFound(f"no such lock: {resource!r}", resource=resource, token=token)
        for t in tokens:
            self._end_hold(res, t, events, cause=ReleaseCause.ADMIN)
        self._settle(now, events)
        return events

    def end_session(self, session: str, now: float) -> list[LockEvent]:
        """Refuse the session's waiters now; release its holds after the grace period."""
        events: list[LockEvent] = []
        self._advance(now, events)
        for wid in list(self._session_waiters.get(session, ())):
            self._refuse(self.waiters[wid], RefusalReason.SESSION_ENDED, events)
        deadline = now + self.settings.session_grace_s
        self._ending[session] = deadline
        self._mark_session(session)
        heapq.heappush(self._grace_heap, (deadline, session))
        self._advance(now, events)
        self._settle(now, events)
        return events

    def resume_session(self, session: str, now: float) -> list[LockEvent]:
        """The session came back within its grace period: keep its holds."""
        events: list[LockEvent] = []
        self._advance(now, events)
        if self._ending.pop(session, None) is not None:
            self._mark_session(session)
        self._settle(now, events)
        return events

    def tick(self, now: float) -> list[LockEvent]:
        """Apply every timer due at `now`."""
        events: list[LockEvent] = []
        self._advance(now, events)
        self._settle(now, events)
        return events

    # -- inspection -----------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When the next timer is due (inf when none)."""
        return min(
            top(self._lease_heap, self._lease_valid),
            top(self._wait_heap, self._wait_valid),
            top(self._grace_heap, self._grace_valid),
            top(self._aging_heap, self._aging_valid),
        )

    def free_for(self, resource: str, mode: LockMode) -> bool:
        """Whether an acquire of `resource` in `mode` would be granted at once (nobody waits,
        every holder is compatible); timers due now can only free more."""
        res = self.resources.get(resource)
        if res is None:
            return True
        return not res.queue and all(compatible(h.mode, mode) for h in res.holders.values())

    def holding(self, resource: str, token: int) -> Lease | None:
        res = self.resources.get(resource)
        return res.holders.get(token) if res is not None else None

    def last_token(self, resource: str) -> int:
        return self._counters.get(resource, 0)

    def counters(self) -> Mapping[str, int]:
        return self._counters

    def view(self, resource: str) -> ResourceView | None:
        res = self.resources.get(resource)
        if res is None:
            return None
        waiters = tuple(waiter_view(w) for w in res.queue)
        return ResourceView(resource, tuple(res.holders.values()), waiters, self.last_token(resource))

    def views(self) -> list[ResourceView]:
        return [v for name in self.resources if (v := self.view(name)) is not None]

    def statistics(self) -> dict[str, int]:
        holders = sum(len(r.holders) for r in self.resources.values())
        live = {"holders": holders, "waiters": len(self.waiters), "resources": len(self.resources)}
        return {**self.stats, **live, "wait_for_edges": self.graph.edge_count()}

    # -- queue and grants -------------------------------------------------------------------

    def _enqueue(self, res: Resource, req: AcquireRequest, now: float) -> Waiter:
        wid = self.new_request_id()
        waiter = Waiter(wid, req, now, now + req.wait_s, min(req.priority, self.settings.max_priority))
        self.waiters[wid] = waiter
        self._owner_waiters.setdefault(req.owner, {})[wid] = None
        self._session_waiters.setdefault(req.session, {})[wid] = None
        res.queue.append(waiter)
        res.queue.sort(key=service_order)
        if req.wait_s > 0:
            heapq.heappush(self._wait_heap, (waiter.deadline, wid))
            self._schedule_aging(waiter)
        return waiter

    def _grant_pass(self, res: Resource, now: float, events: list[LockEvent]) -> None:
        while res.queue and all(compatible(h.mode, res.queue[0].req.mode) for h in res.holders.values()):
            waiter = res.queue[0]
            self._drop_waiter(waiter)
            token = self._counters.get(res.name, 0) + 1
            self._counters[res.name] = token
            req = waiter.req
            lease = Lease(
                req.resource,
                token,
                req.owner,
                req.session,
                req.mode,
                req.priority,
                req.lease_s,
                now,
                now + req.lease_s,
            )
            self._add_holder(res, lease)
            events.append(LockGranted(waiter.id, lease))
            self.stats["grants"] += 1

    def _add_holder(self, res: Resource, lease: Lease) -> None:
        self._grant_seq += 1
        res.holders[lease.token] = lease
        res.grant_seq[lease.token] = self._grant_seq
        self._session_holds.setdefault(lease.session, {})[(res.name, lease.token)] = None
        heapq.heappush(self._lease_heap, (lease.expires_at, res.name, lease.token))

    def _end_hold(
        self, res: Resource, token: int, events: list[LockEvent], *, cause: ReleaseCause | None
    ) -> Lease:
        """Remove a holder; `cause=None` means the caller emits its own event (expiry, preemption)."""
        lease = res.holders.pop(token)
        del res.grant_seq[token]
        holds = self._session_holds[lease.session]
        del holds[(res.name, token)]
        if not holds:
            del self._session_holds[lease.session]
        if cause is not None:
            events.append(LockReleased(lease, cause))
            self.stats["releases_" + cause.value.replace("-", "_")] += 1
        self._mark(res)
        return lease

    def revoke(self, res: Resource, token: int, events: list[LockEvent]) -> Lease:
        """Remove a holder without an event (for `_deadlock`, which emits LockPreempted)."""
        return self._end_hold(res, token, events, cause=None)

    def _refuse(
        self,
        waiter: Waiter,
        reason: RefusalReason,
        events: list[LockEvent],
        cycle: tuple[str, ...] = (),
    ) -> None:
        self._drop_waiter(waiter)
        req = waiter.req
        events.append(LockRefused(waiter.id, req.resource, req.owner, req.session, reason, cycle))
        self.stats["refusals_" + reason.value.replace("-", "_")] += 1

    def refuse(self, waiter: Waiter, cycle: tuple[str, ...], events: list[LockEvent]) -> None:
        """Refuse a waiter to break a deadlock (for `_deadlock`)."""
        self._refuse(waiter, RefusalReason.DEADLOCK, events, cycle)

    def _drop_waiter(self, waiter: Waiter) -> None:
        del self.waiters[waiter.id]
        discard(self._owner_waiters, waiter.req.owner, waiter.id)
        discard(self._session_waiters, waiter.req.session, waiter.id)
        res = self.resources[waiter.req.resource]
        res.queue.remove(waiter)
        _edges.set_blockers(self, waiter, (), ())
        self._mark(res)

    def owner_waiters(self, owner: str) -> Iterable[Waiter]:
        return [self.waiters[wid] for wid in self._owner_waiters.get(owner, ())]

    # -- wait-for edges and settling ------------------------------------------------------

    def ending(self, session: str) -> bool:
        """Whether the session has ended and its grace period runs."""
        return session in self._ending

    def _mark_session(self, session: str) -> None:
        for name, _ in self._session_holds.get(session, ()):
            self._dirty[name] = None

    def _mark(self, res: Resource) -> None:
        self._dirty[res.name] = None

    def _settle(self, now: float, events: list[LockEvent]) -> None:
        """Grant, recompute edges, and break every cycle a new edge closed, until stable."""
        pending: list[tuple[str, str]] = []
        while True:
            while self._dirty:
                name = next(iter(self._dirty))
                del self._dirty[name]
                res = self.resources.get(name)
                if res is None:
                    continue
                self._grant_pass(res, now, events)
                pending.extend(_edges.resync(self, res))
                if not res.holders and not res.queue:
                    del self.resources[name]
            if not pending:
                return
            a, b = pending[0]
            cycle = self.graph.cycle_through(a, b)
            if cycle is None:
                pending.pop(0)
            else:
                self.stats["deadlocks"] += 1
                _deadlock.resolve(self, cycle, events)

    # -- timers ---------------------------------------------------------------------------

    def _advance(self, now: float, events: list[LockEvent]) -> None:
        """Apply due timers in time order (ties: leases, sessions, waits, aging)."""
        if self._due_bound() > now:
            return  # the common case, decided without validating any heap entry
        while (when := self.next_deadline()) <= now and when < math.inf:
            if top(self._lease_heap, self._lease_valid) == when:
                _, name, token = heapq.heappop(self._lease_heap)
                lease = self._end_hold(self.resources[name], token, events, cause=None)
                events.append(LockExpired(lease))
                self.stats["expiries"] += 1
            elif top(self._grace_heap, self._grace_valid) == when:
                _, session = heapq.heappop(self._grace_heap)
                del self._ending[session]
                self._mark_session(session)
                for name, token in list(self._session_holds.get(session, ())):
                    self._end_hold(self.resources[name], token, events, cause=ReleaseCause.SESSION_ENDED)
            elif top(self._wait_heap, self._wait_valid) == when:
                _, wid = heapq.heappop(self._wait_heap)
                self._refuse(self.waiters[wid], RefusalReason.TIMEOUT, events)
            else:
                _, wid = heapq.heappop(self._aging_heap)
                self._age(self.waiters[wid])
            self._settle(when, events)

    def _due_bound(self) -> float:
        """A lower bound of `next_deadline()`: the heads of the timer heaps, stale or not."""
        bound = math.inf
        for heap in (self._lease_heap, self._wait_heap, self._grace_heap, self._aging_heap):
            if heap and heap[0][0] < bound:
                bound = heap[0][0]
        return bound

    def _age(self, waiter: Waiter) -> None:
        """One aging step is due (counted in whole steps: no float drift in the schedule)."""
        waiter.aged_steps += 1
        raised = waiter.req.priority + waiter.aged_steps * self.settings.aging_step
        waiter.effective = min(raised, self.settings.max_priority)
        waiter.next_aging = math.inf
        self._schedule_aging(waiter)
        res = self.resources[waiter.req.resource]
        res.queue.sort(key=service_order)
        self._mark(res)

    def _schedule_aging(self, waiter: Waiter) -> None:
        interval = self.settings.aging_interval_s
        if interval <= 0 or waiter.effective >= self.settings.max_priority:
            return
        waiter.next_aging = waiter.enqueued_at + (waiter.aged_steps + 1) * interval
        if waiter.next_aging < waiter.deadline:
            heapq.heappush(self._aging_heap, (waiter.next_aging, waiter.id))

    def _lease_valid(self, entry: tuple[float, str, int]) -> bool:
        lease = self.holding(entry[1], entry[2])
        return lease is not None and lease.expires_at == entry[0]

    def _wait_valid(self, entry: tuple[float, int]) -> bool:
        waiter = self.waiters.get(entry[1])
        return waiter is not None and waiter.deadline == entry[0]

    def _grace_valid(self, entry: tuple[float, str]) -> bool:
        return self._ending.get(entry[1]) == entry[0]

    def _aging_valid(self, entry: tuple[float, int]) -> bool:
        waiter = self.waiters.get(entry[1])
        return waiter is not None and waiter.next_aging == entry[0]

    def _held(self, resource: str, token: int) -> tuple[Resource, Lease]:
        res = self.resources.get(resource)
        lease = res.holders.get(token) if res is not None else None
        if res is None or lease is None:
            raise NotFound(f"lock {resource!r}/{token} is not held", resource=resource, token=token)
        return res, lease
