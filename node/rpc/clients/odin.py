"""Odin, the platform assistant's main process: forward a request and stream the answer back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio
from grpclib.const import Cardinality

from node.errors import Unavailable
from node.rpc._bridge import JOB_CANCEL_WAIT_S
from node.rpc._island import Island
from node.rpc._pipes import ToTrio
from node.rpc.clients._base import NeighbourChannel, Refused, neighbour_error
from node.rpc.settings import NeighbourSettings
from protos.gen.asgard import v1 as pb

_FORWARD = "/asgard.v1.Odin/Forward"


@dataclass(frozen=True, slots=True)
class OdinRequest:
    """A request for Odin."""

    kind: str
    payload: bytes
    content_type: str = "application/json"
    source_device_id: str | None = None
    network_id: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True, slots=True)
class OdinChunk:
    """One piece of Odin's answer; `final` on the last one."""

    data: bytes
    content_type: str = ""
    final: bool = False


class OdinClient(Protocol):
    """Forwarding to Odin."""

    def forward(
        self, request: OdinRequest
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[OdinChunk]]:
        """Send `request`; the channel yields the answer's chunks in order, then ends
        (EndOfChannel). Failures are raised from `receive` as NodeErrors (Unavailable when
        Odin cannot be reached or takes too long)."""
        ...


class OdinNotConfigured:
    """The default: no Odin. Forwarding fails with a clear Unavailable."""

    def forward(
        self, request: OdinRequest
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[OdinChunk]]:
        return Refused(Unavailable("Odin is not configured ([rpc.odin] address)"))


class GrpcOdin:
    """Odin over gRPC (asgard.v1.Odin); the answer streams through a credit-limited pipe."""

    def __init__(self, island: Island, settings: NeighbourSettings) -> None:
        self._island = island
        self._settings = settings
        self.channel = NeighbourChannel("Odin", settings)

    @asynccontextmanager
    async def forward(self, request: OdinRequest) -> AsyncIterator[trio.abc.ReceiveChannel[OdinChunk]]:
        bridge = self._island.bridge
        pipe: ToTrio[OdinChunk] = ToTrio(bridge, bridge.loop, bridge.window)
        job = bridge.start_island_job(self._forward, request, pipe)
        if job.done.is_set() and job.result is not None:
            job.result.unwrap()  # the island is stopped: Unavailable at once
        try:
            yield pipe.receiver
        finally:
            pipe.close_receiver()
            bridge.cancel_island_job(job)
            with trio.CancelScope(shield=True), trio.move_on_after(JOB_CANCEL_WAIT_S):
                await job.done.wait()

    # Island side ---------------------------------------------------------------------------
    async def _forward(self, request: OdinRequest, pipe: ToTrio[OdinChunk]) -> None:
        try:
            await self._stream(request, pipe)
        except asyncio.CancelledError:
            pipe.close(Unavailable("the Odin request was cancelled"))
            raise
        except Exception as exc:
            pipe.close(neighbour_error("Odin", exc))
        else:
            pipe.close()

    async def _stream(self, request: OdinRequest, pipe: ToTrio[OdinChunk]) -> None:
        message = pb.ForwardRequest(
            request_id=request.request_id,
            source_device_id=request.source_device_id or "",
            network_id=request.network_id or "",
            kind=request.kind,
            content_type=request.content_type,
            payload=request.payload,
            attributes=dict(request.attributes),
        )
        async with self.channel.get().request(
            _FORWARD,
            Cardinality.UNARY_STREAM,
            pb.ForwardRequest,
            pb.ForwardChunk,
            timeout=self._settings.stream_timeout_s,
            metadata=self.channel.metadata(),
        ) as stream:
            async with asyncio.timeout(self._settings.timeout_s):  # opening: connect + first headers
                await stream.send_message(message, end=True)
                await stream.recv_initial_metadata()
            async for chunk in stream:
                if not await pipe.put(OdinChunk(chunk.data, chunk.content_type, chunk.final)):
                    await stream.cancel()
                    return
