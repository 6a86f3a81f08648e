"""grpc.health.v1.Health, served on the island from a status table the node sets.

The node (any thread) sets each service's status in `HealthState`; Check and List read it on the
island without a hop to Trio, so probes stay cheap and work even when the Trio side is busy.
Watch streams send the current status and then every change. On drain the server sets every
status to NOT_SERVING and ends Watch streams with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from node.rpc._gate import CallContext, Method, Stream
from node.rpc._streams import request
from protos.gen.grpc.health import v1 as hpb

SERVICE = "grpc.health.v1.Health"
ServingName = Literal["serving", "not_serving", "unknown"]
_SERVING = {
    "serving": hpb.HealthCheckResponseServingStatus.SERVING,
    "not_serving": hpb.HealthCheckResponseServingStatus.NOT_SERVING,
    "unknown": hpb.HealthCheckResponseServingStatus.UNKNOWN,
}


class HealthState:
    """Serving status per service name ("" = the whole node); `set` is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, ServingName] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # island

    def set(self, service: str, status: ServingName) -> None:
        """Set one service's status; Watch streams see the change."""
        with self._lock:
            self._status[service] = status
            loop = self._loop
        if loop is not None:
            # A closed island loop raises RuntimeError: nobody watches any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._notify)

    def set_all(self, status: ServingName) -> None:
        """Set every known service (and the node) to `status`."""
        with self._lock:
            names = set(self._status) | {""}
        for name in names:
            self.set(name, status)

    def get(self, service: str) -> ServingName | None:
        """The status of `service`, None when unknown."""
        with self._lock:
            return self._status.get(service)

    def snapshot(self) -> dict[str, ServingName]:
        """Every service's status."""
        with self._lock:
            return dict(self._status)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the island loop (island thread)."""
        self._changed = asyncio.Event()
        with self._lock:
            self._loop = loop

    def detach(self) -> None:
        """Unbind from the island loop."""
        with self._lock:
            self._loop = None

    def _notify(self) -> None:
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def changed(self) -> asyncio.Event:
        """An event set by the next `set` (island thread, after `attach`): take it *before*
        reading a status, so a change between the read and the wait is never missed."""
        assert self._changed is not None
        return self._changed


class HealthService:
    """Check, List and Watch."""

    def __init__(self, state: HealthState, public: bool) -> None:
        self._state = state
        self.public = public

    def methods(self) -> list[Method]:
        """The methods, for the gate (public unless `public` is turned off)."""

        def is_public() -> bool:
            return self.public

        return [
            Method(f"/{SERVICE}/Check", self.check, Cardinality.UNARY_UNARY,
                   hpb.HealthCheckRequest, hpb.HealthCheckResponse, is_public),
            Method(f"/{SERVICE}/List", self.list, Cardinality.UNARY_UNARY,
                   hpb.HealthListRequest, hpb.HealthListResponse, is_public),
            Method(f"/{SERVICE}/Watch", self.watch, Cardinality.UNARY_STREAM,
                   hpb.HealthCheckRequest, hpb.HealthCheckResponse, is_public),
        ]  # fmt: skip

    async def check(self, stream: Stream, ctx: CallContext) -> None:
        req: hpb.HealthCheckRequest = await request(stream)
        status = self._state.get(req.service)
        if status is None:
            raise GRPCError(Status.NOT_FOUND, f"unknown service {req.service!r}")
        await stream.send_message(hpb.HealthCheckResponse(status=_SERVING[status]))

    async def list(self, stream: Stream, ctx: CallContext) -> None:
        await request(stream)
        statuses = {
            name: hpb.HealthCheckResponse(status=_SERVING[status])
            for name, status in sorted(self._state.snapshot().items())
        }
        await stream.send_message(hpb.HealthListResponse(statuses=statuses))

    async def watch(self, stream: Stream, ctx: CallContext) -> None:
        req: hpb.HealthCheckRequest = await request(stream)
        drained = asyncio.Event()
        ctx.on_drain = drained.set
        sent: hpb.HealthCheckResponseServingStatus | None = None
        while True:
            changed = self._state.changed()
            status = self._state.get(req.service)
            current = (
                hpb.HealthCheckResponseServingStatus.SERVICE_UNKNOWN if status is None else _SERVING[status]
            )
            if current != sent:
                await stream.send_message(hpb.HealthCheckResponse(status=current))
                sent = current
            if drained.is_set() or ctx.draining:
                break  # after sending the last status (NOT_SERVING when the node drains)
            await _either(changed, drained)
        raise GRPCError(Status.UNAVAILABLE, "the node is shutting down")


async def _either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Wait until one of the two events is set."""
    waiters = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
