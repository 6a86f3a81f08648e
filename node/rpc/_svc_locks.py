"""asgard.v1.LockService on the island (semantics: docs/locks.md, written with the lock service)."""

from __future__ import annotations

from grpclib.const import Cardinality

from node.errors import InvalidInput
from node.rpc import _convert as cv
from node.rpc import model
from node.rpc._gate import CallContext, Method, Stream
from node.rpc._streams import pump_out, request
from node.rpc.backend import RpcBackend
from protos.gen.asgard import v1 as pb

SERVICE = "asgard.v1.LockService"

_MODE: dict[pb.LockMode, model.LockModeName] = {
    pb.LockMode.UNSPECIFIED: "exclusive",
    pb.LockMode.EXCLUSIVE: "exclusive",
    pb.LockMode.SHARED: "shared",
}
_MODE_OUT = {"exclusive": pb.LockMode.EXCLUSIVE, "shared": pb.LockMode.SHARED}
_STATE = {
    "queued": pb.AcquireState.QUEUED,
    "granted": pb.AcquireState.GRANTED,
    "refused": pb.AcquireState.REFUSED,
    "released": pb.AcquireState.RELEASED,
    "expired": pb.AcquireState.EXPIRED,
    "preempted": pb.AcquireState.PREEMPTED,
}
_REASON = {
    "timeout": pb.RefusalReason.TIMEOUT,
    "deadlock": pb.RefusalReason.DEADLOCK,
    "busy": pb.RefusalReason.BUSY,
    "limit": pb.RefusalReason.LIMIT,
    "unavailable": pb.RefusalReason.UNAVAILABLE,
}
_KIND = {
    "granted": pb.LockEventKind.GRANTED,
    "released": pb.LockEventKind.RELEASED,
    "expired": pb.LockEventKind.EXPIRED,
    "preempted": pb.LockEventKind.PREEMPTED,
    "refused": pb.LockEventKind.REFUSED,
    "refreshed": pb.LockEventKind.REFRESHED,
}


class LockService:
    """Acquire, Release, Refresh, List, Watch."""

    def __init__(self, backend: RpcBackend) -> None:
        self._backend = backend

    def methods(self) -> list[Method]:
        """The methods, for the gate."""
        unary = Cardinality.UNARY_UNARY
        return [
            Method(f"/{SERVICE}/Acquire", self.acquire, Cardinality.UNARY_STREAM,
                   pb.AcquireRequest, pb.AcquireEvent),
            Method(f"/{SERVICE}/Release", self.release, unary, pb.ReleaseRequest, pb.ReleaseResponse),
            Method(f"/{SERVICE}/Refresh", self.refresh, unary, pb.RefreshRequest, pb.Lease),
            Method(f"/{SERVICE}/List", self.list, unary, pb.ListLocksRequest, pb.ListLocksResponse),
            Method(f"/{SERVICE}/Watch", self.watch, Cardinality.UNARY_STREAM,
                   pb.WatchLocksRequest, pb.LockEvent),
        ]  # fmt: skip

    async def acquire(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.AcquireRequest = await request(stream)
        wait = req.wait_timeout_ms
        lock_request = model.LockRequest(
            resource=_resource(req.resource),
            mode=cv.enum_name(_MODE, req.mode, "mode"),
            lease_s=req.lease_ms / 1000 if req.lease_ms else None,
            priority=req.priority,
            wait_timeout_s=None if wait is None else wait / 1000,
            holder=req.holder or None,
        )
        call = ctx.open_stream(self._backend.acquire_lock, lock_request, bidirectional=False)
        await pump_out(stream, call, _acquire_event)

    async def release(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.ReleaseRequest = await request(stream)
        released = await ctx.call(self._backend.release_lock, _resource(req.resource), req.fencing_token)
        await stream.send_message(pb.ReleaseResponse(released=released))

    async def refresh(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.RefreshRequest = await request(stream)
        lease_s = req.lease_ms / 1000 if req.lease_ms else None
        lease = await ctx.call(
            self._backend.refresh_lock, _resource(req.resource), req.fencing_token, lease_s
        )
        await stream.send_message(_lease(lease))

    async def list(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.ListLocksRequest = await request(stream)
        query = model.LockQuery(
            prefix=req.resource_prefix,
            page_size=cv.positive_or_none(req.page_size),
            page_token=req.page_token or None,
        )
        page = await ctx.call(self._backend.list_locks, query)
        await stream.send_message(
            pb.ListLocksResponse(
                locks=[_lock_info(s) for s in page.locks],
                next_page_token=page.next_page_token or "",
            )
        )

    async def watch(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.WatchLocksRequest = await request(stream)
        call = ctx.open_stream(self._backend.watch_locks, req.resource_prefix, bidirectional=False)
        await pump_out(stream, call, _lock_event)


def _resource(name: str) -> str:
    if not name:
        raise InvalidInput("resource is empty", field="resource")
    return name


def _lease(lease: model.LeaseInfo) -> pb.Lease:
    return pb.Lease(
        resource=lease.resource,
        mode=_MODE_OUT[lease.mode],
        fencing_token=lease.fencing_token,
        holder=lease.holder,
        expires=cv.timestamp(lease.expires_at),
        priority=lease.priority,
    )


def _acquire_event(update: model.AcquireUpdate) -> pb.AcquireEvent:
    return pb.AcquireEvent(
        state=_STATE[update.state],
        queue_position=update.queue_position,
        lease=None if update.lease is None else _lease(update.lease),
        reason=pb.RefusalReason.UNSPECIFIED if update.reason is None else _REASON[update.reason],
        detail=update.detail,
    )


def _lock_info(summary: model.LockSummary) -> pb.LockInfo:
    return pb.LockInfo(
        resource=summary.resource,
        holders=[_lease(h) for h in summary.holders],
        waiters=summary.waiters,
        last_fencing_token=summary.last_fencing_token,
        cluster=summary.cluster,
    )


def _lock_event(change: model.LockChange) -> pb.LockEvent:
    return pb.LockEvent(
        kind=_KIND[change.kind],
        resource=change.resource,
        lease=None if change.lease is None else _lease(change.lease),
        at=cv.timestamp(change.at),
        detail=change.detail,
    )
