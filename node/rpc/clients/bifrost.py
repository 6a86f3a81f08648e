"""Bifrost: open a relay connection on another host and exchange device frames through it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

import grpclib.client
import trio
from grpclib.const import Cardinality

from node.errors import Unavailable
from node.rpc._bridge import JOB_CANCEL_WAIT_S
from node.rpc._island import Island
from node.rpc._pipes import EndOfPipe, ToIsland, ToTrio
from node.rpc.clients._base import NeighbourChannel, Refused, neighbour_error
from node.rpc.settings import NeighbourSettings
from protos.gen.asgard import v1 as pb

_RELAY = "/asgard.v1.Bifrost/Relay"
_MARGIN_S = 1.0


@dataclass(frozen=True, slots=True)
class RelayInfo:
    """What the remote host said when it opened the relay."""

    relay_id: str
    host: str
    max_frame_bytes: int


@dataclass(frozen=True, slots=True)
class RelayConnection:
    """An open relay: frames from the remote host arrive on `frames_in` (EndOfChannel when it
    closes; NodeErrors when it fails); frames for it go to `frames_out`."""

    info: RelayInfo
    frames_in: trio.abc.ReceiveChannel[bytes]
    frames_out: trio.abc.SendChannel[bytes]


class BifrostClient(Protocol):
    """Relays on other hosts."""

    def open_relay(self, device_id: str, network_id: str) -> AbstractAsyncContextManager[RelayConnection]:
        """Open a relay speaking for `device_id`; closed when the block ends."""
        ...


class BifrostNotConfigured:
    """The default: no Bifrost. Opening a relay fails with a clear Unavailable."""

    def open_relay(self, device_id: str, network_id: str) -> AbstractAsyncContextManager[RelayConnection]:
        return Refused(Unavailable("Bifrost is not configured ([rpc.bifrost] address)"))


class GrpcBifrost:
    """Bifrost over gRPC (asgard.v1.Bifrost): one bidirectional stream per relay connection."""

    def __init__(self, island: Island, settings: NeighbourSettings) -> None:
        self._island = island
        self._settings = settings
        self.channel = NeighbourChannel("Bifrost", settings)

    @asynccontextmanager
    async def open_relay(self, device_id: str, network_id: str) -> AsyncIterator[RelayConnection]:
        bridge = self._island.bridge
        inbound: ToTrio[RelayInfo | bytes] = ToTrio(bridge, bridge.loop, bridge.window)
        outbound: ToIsland[bytes] = ToIsland(bridge, bridge.loop, bridge.window)
        job = bridge.start_island_job(self._relay, device_id, network_id, inbound, outbound)
        try:
            info = await self._opened(inbound.receiver)
            frames_in = cast("trio.abc.ReceiveChannel[bytes]", inbound.receiver)
            yield RelayConnection(info, frames_in, outbound.sender)
        finally:
            outbound.close_sender()  # half-close: the remote side may finish cleanly
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._settings.timeout_s):
                    await job.done.wait()
                inbound.close_receiver()
                bridge.cancel_island_job(job)
                with trio.move_on_after(JOB_CANCEL_WAIT_S):
                    await job.done.wait()

    async def _opened(self, receiver: trio.abc.ReceiveChannel[RelayInfo | bytes]) -> RelayInfo:
        try:
            with trio.fail_after(self._settings.timeout_s + _MARGIN_S):
                first = await receiver.receive()
        except trio.TooSlowError:
            raise Unavailable("Bifrost did not open the relay in time") from None
        except trio.EndOfChannel:
            raise Unavailable("Bifrost closed the relay while opening it") from None
        if not isinstance(first, RelayInfo):
            raise Unavailable("Bifrost sent a frame before opening the relay")
        return first

    # Island side ---------------------------------------------------------------------------
    async def _relay(
        self,
        device_id: str,
        network_id: str,
        inbound: ToTrio[RelayInfo | bytes],
        outbound: ToIsland[bytes],
    ) -> None:
        try:
            async with self.channel.get().request(
                _RELAY,
                Cardinality.STREAM_STREAM,
                pb.RelayMessage,
                pb.RelayMessage,
                metadata=self.channel.metadata(),
            ) as stream:
                await self._open(stream, device_id, network_id, inbound)
                await self._exchange(stream, inbound, outbound)
        except asyncio.CancelledError:
            inbound.close(Unavailable("the relay was closed"))
            raise
        except Exception as exc:
            inbound.close(neighbour_error("Bifrost", exc))
        else:
            inbound.close()

    async def _open(
        self, stream: Any, device_id: str, network_id: str, inbound: ToTrio[RelayInfo | bytes]
    ) -> None:
        opening = pb.RelayOpen(device_id=device_id, network_id=network_id, origin=socket.gethostname())
        async with asyncio.timeout(self._settings.timeout_s):
            await stream.send_message(pb.RelayMessage(open=opening))
            reply = await stream.recv_message()
        if reply is None or reply.opened is None:
            raise Unavailable("Bifrost did not answer the opening with 'opened'")
        opened = reply.opened
        await inbound.put(RelayInfo(opened.relay_id, opened.host, opened.max_frame_bytes))

    async def _exchange(
        self,
        stream: grpclib.client.Stream[Any, Any],
        inbound: ToTrio[RelayInfo | bytes],
        outbound: ToIsland[bytes],
    ) -> None:
        sender = asyncio.get_running_loop().create_task(_send_frames(stream, outbound))
        try:
            async for message in stream:
                if message.frame is not None and not await inbound.put(message.frame):
                    break
            if sender.done() and (error := sender.exception()) is not None:
                raise error
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender


async def _send_frames(stream: grpclib.client.Stream[Any, Any], outbound: ToIsland[bytes]) -> None:
    while not isinstance(frame := await outbound.get(), EndOfPipe):
        await stream.send_message(pb.RelayMessage(frame=frame))
        outbound.ack()
    await stream.end()
