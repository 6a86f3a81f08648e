"""The Trio side of the lock service: one `LockService` owning the state, its timers and journal.

Start it with `await nursery.start(serve_locks, settings, journal)` (it reports the LockService
object) or `async with open_lock_service(settings, journal) as locks:`. Local resources are decided
by `LockState` on this thread, with no thread hop and no await on the fast path; cluster-wide
resources go to etcd through `_cluster.ClusterLocks` when endpoints are configured.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import trio

from node.clock import WallClock
from node.errors import Aborted, InvalidInput, NodeError, NotFound, Unavailable
from node.locks._cluster import ClusterLocks
from node.locks._journal_writer import Batch, JournalWriter
from node.locks._types import (
    ENDED_EVENTS,
    AcquireRequest,
    Lease,
    LockEvent,
    LockGranted,
    LockMode,
    LockQueued,
    LockRefreshed,
    LockRefused,
    ResourceView,
    refusal_error,
)
from node.locks.etcd import open_etcd_client
from node.locks.journal import CounterReserved, LeaseEnded, LeaseRecord, LockJournal
from node.locks.settings import LockSettings
from node.locks.state import LockState

EventHook = Callable[[LockEvent], None]


@dataclass(eq=False)
class _Slot:
    """Where the state's answer for one waiting acquire lands."""

    on_queued: Callable[[LockQueued], None] | None
    done: trio.Event = field(default_factory=trio.Event)
    lease: Lease | None = None
    refused: LockRefused | None = None
    error: NodeError | None = None
    batch: Batch | None = None


@dataclass(eq=False)
class _Watcher:
    send: trio.MemorySendChannel[LockEvent]
    predicate: Callable[[LockEvent], bool] | None


class LockService:
    """Acquire, release, refresh, inspect and watch locks (see docs/locks.md)."""

    def __init__(
        self,
        settings: LockSettings,
        state: LockState,
        writer: JournalWriter,
        durable: dict[str, int],
        wall: WallClock,
        event_hook: EventHook | None,
    ) -> None:
        self._settings = settings
        self._state = state
        self._writer = writer
        self._durable = durable
        self._reserving: dict[str, tuple[int, Batch]] = {}
        self._wall = wall
        self._hook = event_hook
        self._slots: dict[int, _Slot] = {}
        self._watchers: list[_Watcher] = []
        self._timer: trio.CancelScope | None = None
        self._cluster: ClusterLocks | None = None
        self._closed = False
        self._stats = {"watchers_overflowed": 0, "grants_withheld": 0}

    # -- public API ---------------------------------------------------------------------------

    async def acquire(
        self,
        resource: str,
        *,
        owner: str,
        session: str,
        mode: LockMode = LockMode.EXCLUSIVE,
        lease_s: float | None = None,
        priority: int | None = None,
        wait_s: float | None = None,
        on_queued: Callable[[LockQueued], None] | None = None,
    ) -> Lease:
        """Wait for the lock and return its lease (with the fencing token).

        Raises Deadlock (chosen as a deadlock victim), Aborted (not granted within `wait_s`,
        or the session ended), InvalidInput, ResourceExhausted (limits), Unavailable (etcd
        unreachable for a cluster resource, or the service is stopping). Cancellation withdraws
        the request; a grant that raced with it is released. The returned lease is held and
        unexpired at the moment this returns.
        """
        req = self._request(resource, owner, session, mode, lease_s, priority, wait_s)
        if self._cluster is not None and self._settings.is_cluster_resource(resource):
            return await self._cluster.acquire(req, self._state.new_request_id(), on_queued)
        rid, events = self._state.acquire(req, self._now())
        slot = self._slots[rid] = _Slot(on_queued)
        try:
            self._apply(events)
            await slot.done.wait()
        except BaseException:
            if not slot.done.is_set():
                self._apply(self._state.cancel(rid, trio.current_time()))
            elif slot.lease is not None and not self._closed:  # granted, but nobody to tell
                lease = slot.lease
                self._apply(self._state.abandon(lease.resource, lease.token, trio.current_time()))
            raise
        finally:
            del self._slots[rid]
        if slot.error is not None:
            raise slot.error
        if slot.refused is not None:
            raise refusal_error(slot.refused.reason, resource, slot.refused.cycle)
        assert slot.lease is not None
        return await self._deliver(slot.lease, slot.batch)

    def grants_at_once(self, resource: str, mode: LockMode) -> bool:
        """Whether `acquire(resource, mode)` would return without waiting for anything: a free
        local resource, no journal wait (durable grants off, backlog low, token reserved).

        A surface may then await `acquire` inline instead of in a task of its own (it only
        passes checkpoints); a False answer says nothing (the acquire may still be immediate).
        """
        if self._closed or (self._cluster is not None and self._settings.is_cluster_resource(resource)):
            return False
        if self._settings.durable_grants or self._writer.backlog() > self._settings.journal_max_backlog:
            return False
        next_token = self._state.last_token(resource) + 1
        return self._durable_through(resource) >= next_token and self._state.free_for(resource, mode)

    def acquire_at_once(
        self,
        resource: str,
        *,
        owner: str,
        session: str,
        mode: LockMode = LockMode.EXCLUSIVE,
        lease_s: float | None = None,
        priority: int | None = None,
        wait_s: float | None = None,
    ) -> Lease | None:
        """`acquire` without a checkpoint when `grants_at_once` says it would not wait: the
        lease, or None (nothing was requested: await `acquire`). Raises as `acquire` does.

        A surface's read loop grants a free local lock with this in line: the await of
        `acquire` would only pass a checkpoint (a trip through the scheduler per grant).
        """
        if not self.grants_at_once(resource, mode):
            return None
        req = self._request(resource, owner, session, mode, lease_s, priority, wait_s)
        rid, events = self._state.acquire(req, self._now())
        slot = self._slots[rid] = _Slot(None)
        try:
            self._apply(events)
        finally:
            del self._slots[rid]
        if slot.refused is not None:  # (a try-lock refused at once is an answer too)
            raise refusal_error(slot.refused.reason, resource, slot.refused.cycle)
        lease = slot.lease
        if lease is None:  # queued after all (cannot happen while grants_at_once holds)
            self._apply(self._state.cancel(rid, trio.current_time()))
            return None
        current = self._state.holding(lease.resource, lease.token)
        assert current is not None  # just granted, no checkpoint since
        assert self._durable_through(resource) >= lease.token  # grants_at_once checked it
        return current

    def releases_at_once(self, resource: str) -> bool:
        """Whether `release(resource, ...)` returns without waiting for anything: a local
        resource without durable grants. False for a cluster resource (an etcd delete round
        trip): a surface should then release in a task of its own, not in its read loop."""
        if self._cluster is not None and self._settings.is_cluster_resource(resource):
            return False
        return not self._settings.durable_grants

    async def release(self, resource: str, token: int, *, owner: str) -> None:
        """Release a held lock; NotFound when it is not held any more, PermissionDenied."""
        self._check_open()
        if self._cluster is not None and self._settings.is_cluster_resource(resource):
            await self._cluster.release(resource, token, owner)
            return
        batch = self._apply(self._state.release(resource, token, owner, self._now()))
        if self._settings.durable_grants and batch is not None:
            await batch.wait()

    async def refresh(self, resource: str, token: int, *, owner: str, lease_s: float | None = None) -> Lease:
        """Extend a held lease to now + lease_s; NotFound when it is not held any more."""
        self._check_open()
        lease_s = self._lease_s(lease_s)
        if self._cluster is not None and self._settings.is_cluster_resource(resource):
            return self._cluster.refresh(resource, token, owner, lease_s)
        lease, events = self._state.refresh(resource, token, owner, lease_s, self._now())
        batch = self._apply(events)
        if self._settings.durable_grants and batch is not None:
            await batch.wait()
        return lease

    async def force_release(self, resource: str, token: int | None = None) -> builtins.list[Lease]:
        """Admin: release one lease or every holder of a resource; the leases released."""
        self._check_open()
        if self._cluster is not None and self._settings.is_cluster_resource(resource):
            return await self._cluster.force_release(resource, token)
        events = self._state.force_release(resource, token, self._now())
        self._apply(events)
        return [e.lease for e in events if isinstance(e, ENDED_EVENTS)]

    async def flush(self) -> None:
        """Wait until every journal record queued so far is durable (a graceful stop calls this
        before cancelling the service; a cancellation alone is treated like a crash)."""
        await self._writer.flush()

    def end_session(self, session: str) -> None:
        """A client session ended: refuse its waits now, release its locks after the grace."""
        if self._closed:
            return
        now = trio.current_time()
        self._apply(self._state.end_session(session, now))
        self._reschedule()  # the grace timer may be all that changed
        if self._cluster is not None:
            self._cluster.end_session(session, now)

    def resume_session(self, session: str) -> None:
        """The session came back within its grace period: it keeps its locks."""
        if self._closed:
            return
        self._apply(self._state.resume_session(session, trio.current_time()))
        if self._cluster is not None:
            self._cluster.resume_session(session)

    def list(self) -> builtins.list[ResourceView]:
        """Every local resource with holders or waiters, and this node's cluster locks."""
        views = self._state.views()
        return views + self._cluster.views() if self._cluster is not None else views

    async def get(self, resource: str) -> ResourceView:
        """One resource (a cluster resource is read from etcd); NotFound when it is free."""
        if self._cluster is not None and self._settings.is_cluster_resource(resource):
            view = await self._cluster.view(resource)
        else:
            view = self._state.view(resource)
        if view is None:
            raise NotFound(f"no lock on {resource!r}", resource=resource)
        return view

    @asynccontextmanager
    async def watch(
        self, predicate: Callable[[LockEvent], bool] | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[LockEvent]]:
        """Receive lock events (optionally filtered); the channel ends if the watcher falls
        `watch_queue_size` events behind or the service stops: re-list and watch again."""
        send, receive = trio.open_memory_channel[LockEvent](self._settings.watch_queue_size)
        watcher = _Watcher(send, predicate)
        self._watchers.append(watcher)
        try:
            async with receive:
                yield receive
        finally:
            if watcher in self._watchers:
                self._watchers.remove(watcher)
            send.close()

    def statistics(self) -> dict[str, int]:
        stats = {**self._state.statistics(), **self._stats}
        stats |= {
            "journal_backlog": self._writer.backlog(),
            "journal_commits": self._writer.commits,
            "journal_failures": self._writer.failures,
            "watchers": len(self._watchers),
        }
        if self._cluster is not None:
            stats |= self._cluster.statistics()
        return stats

    def apply_settings(self, settings: LockSettings) -> tuple[str, ...]:
        """Use new live settings now; return the changed fields that need a restart."""
        restart = tuple(
            name
            for name, info in LockSettings.model_fields.items()
            if getattr(settings, name) != getattr(self._settings, name)
            and not (isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("live"))
        )
        live = {name: getattr(settings, name) for name in LockSettings.model_fields if name not in restart}
        self._settings = self._settings.model_copy(update=live)
        self._state.apply_settings(self._settings)
        if self._cluster is not None:
            self._cluster.settings = self._settings
        return restart

    # -- requests and delivery ----------------------------------------------------------------

    def _now(self) -> float:
        """Apply due timers first: a state call that raises must not swallow their events."""
        now = trio.current_time()
        self._apply(self._state.tick(now))
        return now

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the lock service is stopping")

    def _request(
        self,
        resource: str,
        owner: str,
        session: str,
        mode: LockMode,
        lease_s: float | None,
        priority: int | None,
        wait_s: float | None,
    ) -> AcquireRequest:
        self._check_open()
        cfg = self._settings
        for what, name in (("resource", resource), ("owner", owner), ("session", session)):
            _check_name(what, name, cfg.max_name_bytes)
        prio = cfg.default_priority if priority is None else priority
        if not 0 <= prio <= cfg.max_priority:
            raise InvalidInput(f"priority must be 0..{cfg.max_priority}", priority=prio)
        wait = cfg.default_wait_s if wait_s is None else wait_s
        if not (wait >= 0 and math.isfinite(wait)):
            raise InvalidInput("wait_s must be a finite number >= 0", wait_s=wait)
        wait = min(wait, cfg.max_wait_s)
        return AcquireRequest(resource, LockMode(mode), owner, session, self._lease_s(lease_s), prio, wait)

    def _lease_s(self, lease_s: float | None) -> float:
        value = self._settings.default_lease_s if lease_s is None else lease_s
        if not (value > 0 and math.isfinite(value)):
            raise InvalidInput("lease_s must be a finite number > 0", lease_s=value)
        return min(value, self._settings.max_lease_s)

    async def _deliver(self, lease: Lease, batch: Batch | None) -> Lease:
        """Make the grant safe to return: token durable, lease still held and unexpired."""
        try:
            await self._wait_token_durable(lease.resource, lease.token)
            if batch is not None and (
                self._settings.durable_grants or self._writer.backlog() > self._settings.journal_max_backlog
            ):
                await batch.wait()
        except BaseException:
            if not self._closed:
                self._apply(self._state.abandon(lease.resource, lease.token, trio.current_time()))
            raise
        self._check_open()
        current = self._state.holding(lease.resource, lease.token)
        if current is None or current.expires_at <= trio.current_time():
            # Never tell a caller it holds a lock it has lost (expired, preempted) meanwhile.
            self._stats["grants_withheld"] += 1
            self._apply(self._state.abandon(lease.resource, lease.token, trio.current_time()))
            raise Aborted(
                f"lock {lease.resource!r} was lost before the grant reached the caller",
                resource=lease.resource,
                reason="lost",
            )
        return current

    async def _wait_token_durable(self, resource: str, token: int) -> None:
        while self._durable_through(resource) < token:
            await self._reserve(resource, token).wait()

    def _durable_through(self, resource: str) -> int:
        pending = self._reserving.get(resource)
        if pending is not None and pending[1].done.is_set():
            del self._reserving[resource]
            if pending[1].error is None:
                self._durable[resource] = max(self._durable.get(resource, 0), pending[0])
        return self._durable.get(resource, 0)

    def _reserve(self, resource: str, token: int) -> Batch:
        """The batch whose commit makes `token` durable (a reservation of a block ahead)."""
        pending = self._reserving.get(resource)
        if pending is not None and pending[0] >= token:
            return pending[1]
        through = max(token, self._state.last_token(resource)) + self._settings.token_reserve_block
        batch = self._writer.add(CounterReserved(resource, through))
        self._reserving[resource] = (through, batch)
        return batch

    # -- events -------------------------------------------------------------------------------

    def _apply(self, events: builtins.list[LockEvent]) -> Batch | None:
        """Route the state's events: journal, waiting acquires, hook, watchers, timer."""
        batch = None
        if self._closed or not events:
            return None  # a stopped (or crashed) node announces nothing
        for event in events:
            batch = self._journal(event) or batch
            if isinstance(event, LockGranted | LockRefused):
                self._resolve(event, batch)
            elif isinstance(event, LockQueued):
                slot = self._slots.get(event.request_id)
                if slot is not None and slot.on_queued is not None:
                    slot.on_queued(event)
        self.publish(events)
        self._reschedule()
        return batch

    def _reschedule(self) -> None:
        # Only ever moved earlier: a timer that fires before anything is due just ticks and
        # sleeps again, so a release (which makes the deadline later) costs no timer update.
        deadline = self._state.next_deadline()
        if self._timer is not None and deadline < self._timer.deadline:
            self._timer.deadline = deadline

    def _journal(self, event: LockEvent) -> Batch | None:
        if isinstance(event, LockGranted | LockRefreshed):
            lease = event.lease
            if isinstance(event, LockGranted):
                block = self._settings.token_reserve_block
                if self._durable_through(lease.resource) - lease.token < block // 2:
                    self._reserve(lease.resource, lease.token)  # ahead of need: grants rarely wait
            return self._writer.add(self._record(lease))
        if isinstance(event, ENDED_EVENTS):
            return self._writer.add(LeaseEnded(event.lease.resource, event.lease.token))
        return None

    def _record(self, lease: Lease) -> LeaseRecord:
        expires_unix = self._wall.now() + (lease.expires_at - trio.current_time())
        return LeaseRecord(
            lease.resource,
            lease.token,
            lease.owner,
            lease.session,
            lease.mode,
            lease.priority,
            lease.lease_s,
            expires_unix,
        )

    def _resolve(self, event: LockGranted | LockRefused, batch: Batch | None) -> None:
        slot = self._slots.get(event.request_id)
        if slot is None or slot.done.is_set():
            if isinstance(event, LockGranted):  # nobody to hand it to (cannot normally happen)
                lease = event.lease
                self._apply(self._state.abandon(lease.resource, lease.token, trio.current_time()))
            return
        if isinstance(event, LockGranted):
            slot.lease, slot.batch = event.lease, batch
        else:
            slot.refused = event
        slot.done.set()

    def publish(self, events: builtins.list[LockEvent]) -> None:
        """Hand events to the hook and the watchers (the cluster path calls this too)."""
        for event in events:
            if self._hook is not None:
                self._hook(event)
            for watcher in list(self._watchers):
                if watcher.predicate is not None and not watcher.predicate(event):
                    continue
                try:
                    watcher.send.send_nowait(event)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    self._stats["watchers_overflowed"] += 1
                    self._watchers.remove(watcher)
                    watcher.send.close()

    # -- tasks --------------------------------------------------------------------------------

    async def _run_timers(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._state.next_deadline()) as self._timer:
                await trio.sleep_forever()
            self._apply(self._state.tick(trio.current_time()))

    def _close(self) -> None:
        self._closed = True
        self._writer.close()
        for slot in self._slots.values():
            if not slot.done.is_set():
                slot.error = Unavailable("the lock service stopped")
                slot.done.set()
        for watcher in self._watchers:
            watcher.send.close()
        self._watchers.clear()


_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")


def _check_name(what: str, name: str, max_bytes: int) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} must be a non-empty string")
    if len(name) * 4 > max_bytes and len(name.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidInput(f"{what} is longer than {max_bytes} bytes")
    if _CONTROL_CHARACTER.search(name) is not None:
        raise InvalidInput(f"{what} contains control characters")


@asynccontextmanager
async def open_lock_service(
    settings: LockSettings,
    journal: LockJournal,
    *,
    event_hook: EventHook | None = None,
    wall_clock: WallClock | None = None,
) -> AsyncIterator[LockService]:
    """Load the journal, start timers, journal writer and (if configured) the etcd path."""
    from node.locks._restore import load_state

    wall = wall_clock or WallClock()
    state, durable, ended = await load_state(settings, journal, wall)
    writer = JournalWriter(
        journal, settings.journal_timeout_s, settings.journal_retry_s, settings.journal_delay_s
    )
    for record in ended:
        writer.add(record)
    service = LockService(settings, state, writer, durable, wall, event_hook)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(service._run_timers)
            if settings.etcd_endpoints:
                client = await nursery.start(_run_etcd, settings)
                service._cluster = ClusterLocks(client, settings, service.publish)
                await nursery.start(service._cluster.run)
            yield service
            with trio.move_on_after(settings.journal_timeout_s) as scope, suppress(NodeError):
                scope.shield = True
                await writer.flush()  # graceful stop: what was granted is on disk
            service._close()
            nursery.cancel_scope.cancel()
    finally:
        service._close()


async def _run_etcd(
    settings: LockSettings, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
) -> None:
    async with open_etcd_client(
        settings.etcd_endpoints,
        connect_timeout_s=settings.etcd_connect_timeout_s,
        request_timeout_s=settings.etcd_request_timeout_s,
    ) as client:
        task_status.started(client)
        await trio.sleep_forever()


async def serve_locks(
    settings: LockSettings,
    journal: LockJournal,
    *,
    event_hook: EventHook | None = None,
    wall_clock: WallClock | None = None,
    task_status: trio.TaskStatus[LockService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the lock service until cancelled; `nursery.start` returns the LockService."""
    async with open_lock_service(settings, journal, event_hook=event_hook, wall_clock=wall_clock) as service:
        task_status.started(service)
        await trio.sleep_forever()
