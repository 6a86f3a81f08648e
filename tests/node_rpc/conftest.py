"""A real node (run_node in-process, loopback) and the official grpcio client against its gRPC port.

The node fixtures are the relay tests' (`start_relay`, `env`: a node with one network and helpers
for device tokens and WebSocket clients); the grpcio stubs are the router tests' (`stubs`, built
from protos/ with grpcio-tools once per session). grpcio blocks, so every call runs in a Trio
worker thread with a hard timeout (`Client.call`).
"""

from __future__ import annotations

import queue
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import trio

from tests.relay.conftest import env, start_relay  # noqa: F401 - fixtures
from tests.relay.helpers import RelayEnv
from tests.rpc.conftest import Client, stubs  # noqa: F401 - fixture
from wire.device import FrameView, decode_frame_untrusted

TIMEOUT_S = 10.0
MAX_FRAME = 1 << 24


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def rpc_target(node: RelayEnv) -> str:
    return node.handle.addresses["rpc"]


@pytest.fixture
async def grpc_client(env: RelayEnv, stubs: SimpleNamespace) -> AsyncIterator[Client]:  # noqa: F811
    """A grpcio channel to the node's gRPC port."""
    channel = grpc.insecure_channel(rpc_target(env))
    try:
        yield Client(channel, stubs)
    finally:
        channel.close()


class ConnectSession:
    """A device session on a grpcio Connect stream: frames in and out, as on the WebSocket relay."""

    def __init__(self, client: Client, token: str, *, timeout_s: float = 60.0) -> None:
        self._outgoing: queue.Queue[bytes | None] = queue.Queue()
        self.stubs = client.stubs
        self.call: Any = client.routing.Connect(self._requests(), metadata=bearer(token), timeout=timeout_s)

    def _requests(self) -> Iterator[Any]:
        while True:
            frame = self._outgoing.get()
            if frame is None:
                return
            yield self.stubs.routing.ConnectFrame(frame=frame)

    def send(self, frame: bytes) -> None:
        """Queue one frame for the node (grpcio's sender thread writes it)."""
        self._outgoing.put(frame)

    async def receive(self) -> FrameView:
        """The next frame from the node (fails after TIMEOUT_S)."""
        with trio.fail_after(TIMEOUT_S):
            message = await trio.to_thread.run_sync(_next, self.call, abandon_on_cancel=True)
        if message is None:
            raise EOFError("the Connect call ended")
        return decode_frame_untrusted(message.frame, max_payload=MAX_FRAME)

    async def receive_type(self, ftype: int) -> FrameView:
        """The next frame of type `ftype`, skipping others (fails after TIMEOUT_S)."""
        with trio.fail_after(TIMEOUT_S):
            while True:
                frame = await self.receive()
                if frame.type == ftype:
                    return frame

    async def end(self) -> grpc.RpcError | None:
        """Half-close our side and wait for the call's end; the error it ended with, if any."""
        self._outgoing.put(None)
        with trio.fail_after(TIMEOUT_S):
            try:
                while await trio.to_thread.run_sync(_next, self.call, abandon_on_cancel=True) is not None:
                    pass
            except grpc.RpcError as exc:
                return exc
        return None

    def cancel(self) -> None:
        self._outgoing.put(None)
        self.call.cancel()


def _next(call: Any) -> Any:
    """The next response of a grpcio stream, None at its end (StopIteration cannot cross threads)."""
    return next(call, None)
