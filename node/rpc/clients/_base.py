"""What the neighbour-service clients share: a lazily opened grpclib channel on the island, and
the mapping of what goes wrong on the wire to `node.errors`.

Calls are made on the island (grpclib is asyncio-only); the Trio-facing client methods hand them
over with `Island.run` and get plain records back, never generated messages.
"""

from __future__ import annotations

import asyncio
import ssl
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

import grpclib.client
import grpclib.exceptions
import trio
from grpclib.const import Status

from node.errors import (
    Aborted,
    Conflict,
    InvalidInput,
    NodeError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from node.rpc.settings import NeighbourSettings

T = TypeVar("T")

_BY_STATUS: dict[Status, type[NodeError]] = {
    Status.UNAUTHENTICATED: Unauthenticated,
    Status.PERMISSION_DENIED: PermissionDenied,
    Status.NOT_FOUND: NotFound,
    Status.INVALID_ARGUMENT: InvalidInput,
    Status.ALREADY_EXISTS: Conflict,
    Status.RESOURCE_EXHAUSTED: ResourceExhausted,
    Status.ABORTED: Aborted,
}


def neighbour_error(service: str, exc: BaseException) -> NodeError:
    """The node error for a failed call to `service` (unreachable and timeouts: Unavailable)."""
    if isinstance(exc, NodeError):
        return exc
    if isinstance(exc, grpclib.exceptions.GRPCError):
        kind = _BY_STATUS.get(exc.status, Unavailable)
        return kind(f"{service}: {exc.message or exc.status.name}", grpc_status=exc.status.name)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return Unavailable(f"{service} did not answer in time")
    return Unavailable(f"{service} is unreachable: {type(exc).__name__}: {exc}")


class NeighbourChannel:
    """A grpclib channel to one neighbour, opened on first use (island thread only)."""

    def __init__(self, service: str, settings: NeighbourSettings) -> None:
        self.service = service
        self.settings = settings
        self._channel: grpclib.client.Channel | None = None
        self._ssl = _client_ssl(settings) if settings.tls else None

    def get(self) -> grpclib.client.Channel:
        """The channel (island thread)."""
        if self._channel is None:
            host, port = self.settings.host_port()
            self._channel = grpclib.client.Channel(host, port, ssl=self._ssl)
        return self._channel

    def metadata(self) -> dict[str, Any] | None:
        """Call metadata: the bearer token when one is configured."""
        token = self.settings.token
        return None if token is None else {"authorization": f"Bearer {token}"}

    def close(self) -> None:
        """Close the channel (island thread)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def _client_ssl(settings: NeighbourSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=None if settings.tls_ca_path is None else str(settings.tls_ca_path)
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


async def close_channels(*channels: NeighbourChannel | None) -> None:
    """Close channels on the island (an island coroutine, for `Island.run`)."""
    for channel in channels:
        if channel is not None:
            channel.close()
    await asyncio.sleep(0)  # let the transports' close callbacks run


class Refused(AbstractAsyncContextManager[T]):
    """An async context manager whose entry fails with `error` (the not-configured defaults)."""

    def __init__(self, error: NodeError) -> None:
        self._error = error

    async def __aenter__(self) -> T:
        await trio.lowlevel.checkpoint()
        raise self._error

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
