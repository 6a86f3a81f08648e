"""In-process fake neighbour servers (Heimdall, Odin, Bifrost) implementing the protos with the
betterproto2 bases, served by grpclib on an island of their own (as another process would)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpclib.server
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from node.rpc import open_island
from protos.gen.asgard import v1 as pb


class Signal:
    """A trio.Event that code on another thread (a fake's island) can set."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self._token = trio.lowlevel.current_trio_token()

    def set(self) -> None:
        self._token.run_sync_soon(self.event.set)


@dataclass
class FakeHeimdall(pb.HeimdallBase):
    """Tokens and devices from tables; `delay_s` makes every answer late."""

    tokens: dict[str, pb.TokenIdentity] = field(default_factory=dict)
    devices: dict[str, pb.DeviceIdentity] = field(default_factory=dict)
    delay_s: float = 0.0
    calls: int = 0
    seen_metadata: list[str] = field(default_factory=list)

    async def validate_token(self, message: pb.ValidateTokenRequest) -> pb.TokenIdentity:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.tokens.get(message.token, pb.TokenIdentity(valid=False))

    async def get_device_identity(self, message: pb.GetDeviceIdentityRequest) -> pb.DeviceIdentity:
        self.calls += 1
        try:
            return self.devices[message.device_id]
        except KeyError:
            raise GRPCError(Status.NOT_FOUND, f"no device {message.device_id}") from None


def valid_identity(subject: str, role: str = "service", expires: datetime | None = None) -> pb.TokenIdentity:
    """A valid Heimdall token identity."""
    return pb.TokenIdentity(valid=True, subject=subject, role=role, networks=[], expires=expires)


@dataclass
class FakeOdin(pb.OdinBase):
    """Answers in chunks: the payload split in `chunks` parts; kind "fail" fails, "slow" hangs."""

    chunks: int = 3
    cancelled: int = 0
    requests: list[pb.ForwardRequest] = field(default_factory=list)
    on_request: Signal | None = None
    on_cancel: Signal | None = None

    async def forward(self, message: pb.ForwardRequest) -> AsyncIterator[pb.ForwardChunk]:
        self.requests.append(message)
        if self.on_request is not None:
            self.on_request.set()
        if message.kind == "fail":
            raise GRPCError(Status.INVALID_ARGUMENT, "Odin does not understand")
        try:
            if message.kind == "slow":
                await asyncio.sleep(3600)
            size = max(1, len(message.payload) // self.chunks)
            parts = [message.payload[i : i + size] for i in range(0, len(message.payload), size)]
            for index, part in enumerate(parts):
                yield pb.ForwardChunk(content_type="text/plain", data=part, final=index == len(parts) - 1)
        except asyncio.CancelledError:
            self.cancelled += 1
            if self.on_cancel is not None:
                self.on_cancel.set()
            raise


@dataclass
class FakeBifrost(pb.BifrostBase):
    """Opens relays and answers every frame with the frame reversed."""

    opened: list[pb.RelayOpen] = field(default_factory=list)

    async def relay(self, messages: AsyncIterator[pb.RelayMessage]) -> AsyncIterator[pb.RelayMessage]:
        first = await messages.__anext__()
        if first.open is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "open first")
        self.opened.append(first.open)
        yield pb.RelayMessage(
            opened=pb.RelayOpened(relay_id="relay-1", host="far.example", max_frame_bytes=65536)
        )
        async for message in messages:
            if message.frame is not None:
                yield pb.RelayMessage(frame=message.frame[::-1])


@asynccontextmanager
async def serve_fakes(*services: object) -> AsyncIterator[str]:
    """Serve `services` on 127.0.0.1; yields "host:port"."""
    async with open_island(name="fake-neighbours") as island:
        servers: list[grpclib.server.Server] = []

        async def start() -> str:
            server = grpclib.server.Server(list(services))  # binds to the running (island) loop
            servers.append(server)
            await server.start("127.0.0.1", 0)
            host, port = server._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
            return f"{host}:{port}"

        async def stop() -> None:
            servers[0].close()
            await servers[0].wait_closed()

        address = await island.run(start)
        try:
            yield address
        finally:
            with trio.CancelScope(shield=True):
                await island.run(stop)


def in_an_hour() -> datetime:
    """A timestamp one hour ahead."""
    return datetime.fromtimestamp(datetime.now(UTC).timestamp() + 3600, UTC)
