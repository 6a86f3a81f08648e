"""asgard.v1.LockService over the node's LockService (semantics: docs/locks.md, docs/grpc.md).

Identity: a caller's lock **identity** is its token's device id, or the token id for tokens not
bound to a device; the **owner** is the identity, or `<identity>/<holder>` when the request names
a holder (one owner per thread of control, for deadlock detection). A caller releases and
refreshes leases of its own identity. Leases taken through these calls belong to the lock session
`rpc:<identity>`, which no connection ends: as the proto says, closing an Acquire stream after
GRANTED keeps the lease until Release or expiry (a device that wants its locks released when it
disconnects takes them on its device session: lock frames on Connect or the WebSocket relay).

Acquire: QUEUED updates (dropped, not delayed, when the client is not reading: they are advisory),
then GRANTED or REFUSED (timeout, busy for a try-lock, deadlock); after GRANTED the stream stays
open and ends with RELEASED, EXPIRED or PREEMPTED. Other errors end the stream with their status
(INVALID_ARGUMENT, PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio

from node.auth import Action, Principal
from node.clock import WallClock
from node.errors import Aborted, Deadlock, NodeError, NotFound
from node.locks import (
    Lease,
    LockEvent,
    LockExpired,
    LockGranted,
    LockMode,
    LockPreempted,
    LockQueued,
    LockRefreshed,
    LockRefused,
    LockReleased,
    LockService,
)
from node.relay import LeaseBook
from node.rpc import model

NO_WAIT_LIMIT_S = 1e9
"""`wait_timeout_s` None means "the node's maximum": a huge wait, clamped by `locks.max_wait_s`."""
_REFUSALS: dict[str | None, model.RefusalReasonName] = {
    "timeout": "timeout",
    "busy": "busy",
    "deadlock": "deadlock",
}


def identity_of(who: Principal) -> str:
    """The lock identity of a caller."""
    return who.device_id or who.token_id


class NodeLocks:
    """The lock half of the node's RpcBackend."""

    def __init__(
        self, locks: LockService, book: LeaseBook, wall: WallClock, is_cluster: Callable[[str], bool]
    ) -> None:
        self.locks = locks
        self.book = book
        self.wall = wall
        self.is_cluster = is_cluster

    def lease_info(self, lease: Lease) -> model.LeaseInfo:
        expires = self.wall.now() + (lease.expires_at - trio.current_time())
        return model.LeaseInfo(
            lease.resource, lease.mode.value, lease.token, lease.owner, expires, lease.priority
        )

    async def acquire(
        self, who: Principal, req: model.LockRequest, updates: trio.abc.SendChannel[model.AcquireUpdate]
    ) -> None:
        who.require(Action.LOCK)
        identity = identity_of(who)
        send_nowait: Callable[[model.AcquireUpdate], None] | None = getattr(updates, "send_nowait", None)

        def queued(event: LockQueued) -> None:
            if send_nowait is not None:
                # Positions are advisory: a client that does not read loses some.
                with contextlib.suppress(trio.WouldBlock):
                    send_nowait(model.AcquireUpdate("queued", queue_position=event.position))

        wait = NO_WAIT_LIMIT_S if req.wait_timeout_s is None else req.wait_timeout_s
        try:
            lease = await self.locks.acquire(
                req.resource,
                owner=identity if not req.holder else f"{identity}/{req.holder}",
                session=f"rpc:{identity}",
                mode=LockMode(req.mode),
                lease_s=req.lease_s,
                priority=req.priority,
                wait_s=wait,
                on_queued=queued,
            )
        except (Aborted, Deadlock) as exc:
            await updates.send(_refused(exc, wait))
            return
        await self._follow(lease, updates)

    async def _follow(self, lease: Lease, updates: trio.abc.SendChannel[model.AcquireUpdate]) -> None:
        """Report the grant, then how the lease ended."""
        ended_send, ended = trio.open_memory_channel[LockEvent](1)
        unlisten = self.book.granted(lease, ended_send.send_nowait)
        try:
            info = self.lease_info(lease)
            await updates.send(model.AcquireUpdate("granted", lease=info))
            event = await ended.receive()
        finally:
            unlisten()
        state: model.AcquireStateName = (
            "expired"
            if isinstance(event, LockExpired)
            else "preempted"
            if isinstance(event, LockPreempted)
            else "released"
        )
        detail = event.cause.value if isinstance(event, LockReleased) else ""
        await updates.send(model.AcquireUpdate(state, lease=info, detail=detail))

    async def release(self, who: Principal, resource: str, token: int) -> bool:
        who.require(Action.LOCK)
        try:
            owner = await self.book.owned(self.locks, resource, token, identity_of(who))
            await self.locks.release(resource, token, owner=owner)
        except NotFound:
            return False
        return True

    async def refresh(
        self, who: Principal, resource: str, token: int, lease_s: float | None
    ) -> model.LeaseInfo:
        who.require(Action.LOCK)
        owner = await self.book.owned(self.locks, resource, token, identity_of(who))
        lease = await self.locks.refresh(resource, token, owner=owner, lease_s=lease_s)
        return self.lease_info(lease)

    def list(
        self, who: Principal, query: model.LockQuery, page_default: int, page_max: int
    ) -> model.LockPage:
        who.require(Action.READ)
        size = min(query.page_size or page_default, page_max)
        views = sorted(
            (v for v in self.locks.list() if v.resource.startswith(query.prefix)),
            key=lambda v: v.resource,
        )
        if query.page_token:
            views = [v for v in views if v.resource > query.page_token]
        page = views[:size]
        summaries = tuple(
            model.LockSummary(
                v.resource,
                tuple(self.lease_info(h) for h in v.holders),
                len(v.waiters),
                v.last_token,
                cluster=self.is_cluster(v.resource),
            )
            for v in page
        )
        more = len(views) > size
        return model.LockPage(summaries, page[-1].resource if more and page else None)

    async def watch(
        self, who: Principal, prefix: str, events: trio.abc.SendChannel[model.LockChange]
    ) -> None:
        who.require(Action.READ)

        def wanted(event: LockEvent) -> bool:
            return not isinstance(event, LockQueued) and _resource(event).startswith(prefix)

        async with self.locks.watch(wanted) as changes:
            async for event in changes:
                await events.send(self._change(event))
        raise Aborted("the lock watch fell behind or the lock service stopped: list and watch again")

    def _change(self, event: LockEvent) -> model.LockChange:
        now = self.wall.now()
        if isinstance(event, LockRefused):
            return model.LockChange("refused", event.resource, None, now, event.reason.value)
        kind: model.LockEventKindName
        detail = ""
        if isinstance(event, LockGranted):
            kind = "granted"
        elif isinstance(event, LockRefreshed):
            kind = "refreshed"
        elif isinstance(event, LockExpired):
            kind = "expired"
        elif isinstance(event, LockPreempted):
            kind, detail = "preempted", " -> ".join(event.cycle)
        else:
            assert isinstance(event, LockReleased)
            kind, detail = "released", event.cause.value
        return model.LockChange(kind, event.lease.resource, self.lease_info(event.lease), now, detail)


def _resource(event: LockEvent) -> str:
    if isinstance(event, LockQueued | LockRefused):
        return event.resource
    return event.lease.resource


def _refused(exc: NodeError, wait_s: float) -> model.AcquireUpdate:
    cause = exc.extra.get("reason")
    if isinstance(exc, Deadlock):
        cause = "deadlock"
    elif cause == "timeout" and wait_s == 0:
        cause = "busy"
    return model.AcquireUpdate("refused", reason=_REFUSALS.get(cause), detail=exc.detail)
