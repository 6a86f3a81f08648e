"""Cluster-wide resources, locked in etcd (the etcd-backed path of `LockService`).

One etcd lease per node (an `EtcdSession`, kept alive at TTL/3) carries every key this node puts,
so a node that dies frees its cluster locks within the TTL. A lock request puts its own key
`<etcd_key_prefix><resource>/<lease id>-<n>` with put-if-absent and waits, in create-revision order,
until no earlier conflicting key is left (FIFO; shared keys coexist); the key's create revision is
the fencing token. Priorities and deadlock detection do not apply across nodes: waits are bounded
by their wait timeout. Leases (`lease_s`), refresh, session grace and admin release are enforced by
this node on its own keys. When etcd cannot be reached an acquire fails with Unavailable; a held
lock is reported expired as soon as the node cannot be sure its etcd lease is still alive.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import lru_cache
from urllib.parse import quote

import trio

from node.errors import NodeError, NotFound, PermissionDenied, Unavailable
from node.locks._types import (
    AcquireRequest,
    Lease,
    LockEvent,
    LockExpired,
    LockGranted,
    LockMode,
    LockQueued,
    LockRefreshed,
    LockReleased,
    RefusalReason,
    ReleaseCause,
    ResourceView,
    WaiterView,
    refusal_error,
)
from node.locks.etcd import EtcdClient, EtcdSession, KeyValue, QueueEntry, enqueue, wait_turn
from node.locks.settings import LockSettings

_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds one per call


@dataclass(eq=False, slots=True)
class _Hold:
    lease: Lease
    key: bytes
    session: EtcdSession


def _mode_of(kv: KeyValue) -> LockMode:
    try:
        return LockMode(json.loads(kv.value)["mode"])
    except (ValueError, KeyError, TypeError):
        return LockMode.EXCLUSIVE  # an unreadable key conflicts with everything


class ClusterLocks:
    """This node's cluster locks and waits, on one etcd lease."""

    def __init__(
        self,
        client: EtcdClient,
        settings: LockSettings,
        emit: Callable[[list[LockEvent]], None],
    ) -> None:
        self.client = client
        self.settings = settings
        self._emit = emit
        self._session: EtcdSession | None = None
        self._session_lock = trio.Lock()
        self._holds: dict[tuple[str, int], _Hold] = {}
        self._ending: dict[str, float] = {}
        self._orphans: dict[bytes, None] = {}
        self._orphan_event = trio.Event()
        self._waits: dict[trio.CancelScope, EtcdSession] = {}
        self._nonce = 0
        self._nursery: trio.Nursery | None = None
        self._timer: trio.CancelScope | None = None
        self.grants = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the keepalive and timer tasks; revoke the node's lease on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timers)
                nursery.start_soon(self._cleaner)
                task_status.started()
                await trio.sleep_forever()
        finally:
            session, self._session = self._session, None
            if session is not None:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.client.gateway.request_timeout_s
                    with suppress(NodeError):  # else the lease lapses within its TTL
                        await self.client.lease_revoke(session.lease_id)

    # -- acquire ----------------------------------------------------------------------------

    async def acquire(
        self, req: AcquireRequest, request_id: int, on_queued: Callable[[LockQueued], None] | None
    ) -> Lease:
        session = await self._ensure_session()
        self._nonce += 1
        prefix = self._prefix(req.resource)
        name = b"%016x-%x" % (session.lease_id, self._nonce)
        value = _ENCODE(
            {"owner": req.owner, "session": req.session, "mode": req.mode.value, "priority": req.priority}
        ).encode()
        try:
            entry = await self._queue(req, request_id, session, prefix + name, value, on_queued)
        except BaseException:
            self._orphan(prefix + name)
            raise
        now = trio.current_time()
        lease = Lease(
            req.resource,
            entry.revision,
            req.owner,
            req.session,
            req.mode,
            req.priority,
            req.lease_s,
            now,
            now + req.lease_s,
        )
        self._holds[(req.resource, lease.token)] = _Hold(lease, entry.key, session)
        self.grants += 1
        self._emit([LockGranted(request_id, lease)])
        self._reschedule()
        return lease

    async def _queue(
        self,
        req: AcquireRequest,
        request_id: int,
        session: EtcdSession,
        key: bytes,
        value: bytes,
        on_queued: Callable[[LockQueued], None] | None,
    ) -> QueueEntry:
        """Put our key and wait our turn; return only while our etcd lease is surely alive."""
        prefix = self._prefix(req.resource)
        lost = trio.CancelScope()
        self._waits[lost] = session
        try:
            with lost:
                entry = await enqueue(session, prefix, key[len(prefix) :], value)
                await self._wait(req, request_id, prefix, entry, on_queued)
        finally:
            del self._waits[lost]
        if lost.cancelled_caught or not session.alive():
            raise Unavailable("etcd lease lapsed while waiting for a cluster lock")
        return entry

    async def _wait(
        self,
        req: AcquireRequest,
        request_id: int,
        prefix: bytes,
        entry: QueueEntry,
        on_queued: Callable[[LockQueued], None] | None,
    ) -> None:
        exclusive = req.mode is LockMode.EXCLUSIVE

        def blocks(kv: KeyValue) -> bool:
            return exclusive or _mode_of(kv) is LockMode.EXCLUSIVE

        if not any(blocks(kv) for kv in entry.ahead):
            return
        if req.wait_s <= 0:
            raise refusal_error(RefusalReason.TIMEOUT, req.resource)
        queued = LockQueued(request_id, req.resource, req.owner, len(entry.ahead))
        if on_queued is not None:
            on_queued(queued)
        self._emit([queued])
        with trio.move_on_after(req.wait_s) as waited:
            await wait_turn(self.client, prefix, entry, blocks)
        if waited.cancelled_caught:
            raise refusal_error(RefusalReason.TIMEOUT, req.resource)

    async def _ensure_session(self) -> EtcdSession:
        async with self._session_lock:
            if self._session is not None and self._session.alive():
                return self._session
            sent = trio.current_time()
            lease_id, ttl = await self.client.lease_grant(self.settings.etcd_lease_ttl_s)
            session = EtcdSession(self.client, lease_id, ttl, sent)
            self._session = session
            assert self._nursery is not None
            self._nursery.start_soon(self._keep, session)
            return session

    async def _keep(self, session: EtcdSession) -> None:
        await session.keep_alive()
        self._lose(session)

    def _lose(self, session: EtcdSession) -> None:
        """The node's etcd lease may have lapsed: every lock on it is gone."""
        session.lost.set()
        if self._session is session:
            self._session = None
        for scope, waiting_on in list(self._waits.items()):
            if waiting_on is session:
                scope.cancel()
        gone = [key for key, hold in self._holds.items() if hold.session is session]
        self._emit([LockExpired(self._holds.pop(key).lease) for key in gone])

    # -- holder operations -------------------------------------------------------------------

    def _hold(self, resource: str, token: int, owner: str | None) -> _Hold:
        hold = self._holds.get((resource, token))
        now = trio.current_time()
        if hold is None or not hold.session.alive() or hold.lease.expires_at <= now:
            raise NotFound(f"lock {resource!r}/{token} is not held", resource=resource, token=token)
        if owner is not None and hold.lease.owner != owner:
            raise PermissionDenied(f"lock {resource!r}/{token} is held by another owner")
        return hold

    async def release(
        self, resource: str, token: int, owner: str | None, cause: ReleaseCause = ReleaseCause.RELEASED
    ) -> Lease:
        hold = self._hold(resource, token, owner)
        del self._holds[(resource, token)]
        self._emit([LockReleased(hold.lease, cause)])
        try:
            await self.client.delete(hold.key)
        except NodeError:
            self._orphan(hold.key)  # retried by the timer task; the lease lapse frees it anyway
        return hold.lease

    def refresh(self, resource: str, token: int, owner: str, lease_s: float) -> Lease:
        hold = self._hold(resource, token, owner)
        now = trio.current_time()
        hold.lease = replace(hold.lease, lease_s=lease_s, expires_at=now + lease_s)
        self._emit([LockRefreshed(hold.lease)])
        self._reschedule()
        return hold.lease

    async def force_release(self, resource: str, token: int | None) -> list[Lease]:
        tokens = [t for (name, t) in self._holds if name == resource and token in (None, t)]
        if not tokens:
            raise NotFound(f"no lock on {resource!r} held through this node", resource=resource)
        return [await self.release(resource, t, None, ReleaseCause.ADMIN) for t in tokens]

    def end_session(self, session: str, now: float) -> None:
        self._ending[session] = now + self.settings.session_grace_s
        self._reschedule()

    def resume_session(self, session: str) -> None:
        self._ending.pop(session, None)

    # -- inspection ---------------------------------------------------------------------------

    def views(self) -> list[ResourceView]:
        by_resource: dict[str, list[Lease]] = {}
        for hold in self._holds.values():
            by_resource.setdefault(hold.lease.resource, []).append(hold.lease)
        return [
            ResourceView(name, tuple(leases), (), max(lease.token for lease in leases))
            for name, leases in by_resource.items()
        ]

    async def view(self, resource: str) -> ResourceView | None:
        """The resource as etcd sees it, across nodes (remote deadlines are not known: inf)."""
        revision, kvs = await self.client.range_prefix(self._prefix(resource))
        if not kvs:
            return None
        holders: list[Lease] = []
        waiters: list[WaiterView] = []
        for index, kv in enumerate(kvs):
            owner, session, priority = _describe(kv)
            mode = _mode_of(kv)
            earlier = kvs[:index]
            granted = (
                not earlier
                if mode is LockMode.EXCLUSIVE
                else all(_mode_of(e) is LockMode.SHARED for e in earlier)
            )
            local = self._holds.get((resource, kv.create_revision))
            if granted:
                holders.append(
                    local.lease
                    if local
                    else Lease(
                        resource,
                        kv.create_revision,
                        owner,
                        session,
                        mode,
                        priority,
                        0.0,
                        0.0,
                        math.inf,
                    )
                )
            else:
                waiters.append(
                    WaiterView(
                        kv.create_revision,
                        resource,
                        owner,
                        session,
                        mode,
                        priority,
                        priority,
                        0.0,
                        math.inf,
                    )
                )
        return ResourceView(resource, tuple(holders), tuple(waiters), revision)

    def statistics(self) -> dict[str, int]:
        session = self._session
        return {
            "cluster_holds": len(self._holds),
            "cluster_waits": len(self._waits),
            "cluster_grants": self.grants,
            "cluster_orphan_keys": len(self._orphans),
            "etcd_lease_id": session.lease_id if session else 0,
            "etcd_keepalives": session.keepalives if session else 0,
            "etcd_requests": self.client.gateway.requests,
            "etcd_failures": self.client.gateway.failures,
        }

    # -- timers: lease expiry, session grace, lease lapse, orphan clean-up ------------------------

    def _prefix(self, resource: str) -> bytes:
        return _key_prefix(self.settings.etcd_key_prefix, resource)

    def _orphan(self, key: bytes) -> None:
        self._orphans[key] = None
        self._orphan_event.set()

    def _next_deadline(self) -> float:
        deadlines = [hold.lease.expires_at for hold in self._holds.values()]
        deadlines += [hold.session.valid_until for hold in self._holds.values()]
        deadlines += list(self._ending.values())
        return min(deadlines, default=math.inf)

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.deadline = self._next_deadline()

    async def _timers(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._next_deadline()) as self._timer:
                await trio.sleep_forever()
            self._run_due(trio.current_time())

    def _run_due(self, now: float) -> None:
        events: list[LockEvent] = []
        for key, hold in list(self._holds.items()):
            if not hold.session.alive() or hold.session.valid_until <= now:
                self._lose(hold.session)
            elif hold.lease.expires_at <= now:
                del self._holds[key]
                events.append(LockExpired(hold.lease))
                self._orphan(hold.key)
        for session, deadline in list(self._ending.items()):
            if deadline <= now:
                del self._ending[session]
                for key, hold in list(self._holds.items()):
                    if hold.lease.session == session:
                        del self._holds[key]
                        events.append(LockReleased(hold.lease, ReleaseCause.SESSION_ENDED))
                        self._orphan(hold.key)
        self._emit(events)

    async def _cleaner(self) -> None:
        """Delete keys we no longer want (released while etcd was unreachable, expired, ...)."""
        while True:
            await self._orphan_event.wait()
            self._orphan_event = trio.Event()
            for key in list(self._orphans):
                try:
                    await self.client.delete(key)
                except NodeError:
                    self._orphan_event.set()
                    await trio.sleep(1.0)  # etcd is unreachable; the lease lapse frees them too
                    break
                self._orphans.pop(key, None)


@lru_cache(maxsize=4096)
def _key_prefix(etcd_key_prefix: str, resource: str) -> bytes:
    """The etcd key prefix of a resource's queue (cached: quoting costs more than the lookup)."""
    return (etcd_key_prefix + quote(resource, safe="") + "/").encode()


def _describe(kv: KeyValue) -> tuple[str, str, int]:
    """(owner, session, priority) from a lock key's value; placeholders when unreadable."""
    try:
        doc = json.loads(kv.value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return ("?", "?", 0)
    priority = doc.get("priority")
    return (
        str(doc.get("owner", "?")),
        str(doc.get("session", "?")),
        priority if isinstance(priority, int) else 0,
    )
