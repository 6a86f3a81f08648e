"""Clients of the platform's neighbour services (Odin, Heimdall, Bifrost), each behind a small
interface with a built-in default that fails clearly when the service is not configured."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from node.errors import Unavailable
from node.rpc._island import Island
from node.rpc.clients._base import NeighbourChannel, close_channels
from node.rpc.clients.bifrost import (
    BifrostClient,
    BifrostNotConfigured,
    GrpcBifrost,
    RelayConnection,
    RelayInfo,
)
from node.rpc.clients.heimdall import (
    DeviceIdentity,
    GrpcHeimdall,
    HeimdallAuthenticator,
    HeimdallClient,
    HeimdallNotConfigured,
    TokenIdentity,
)
from node.rpc.clients.odin import GrpcOdin, OdinChunk, OdinClient, OdinNotConfigured, OdinRequest
from node.rpc.settings import RpcSettings

__all__ = [
    "BifrostClient",
    "BifrostNotConfigured",
    "DeviceIdentity",
    "GrpcBifrost",
    "GrpcHeimdall",
    "GrpcOdin",
    "HeimdallAuthenticator",
    "HeimdallClient",
    "HeimdallNotConfigured",
    "Neighbours",
    "OdinChunk",
    "OdinClient",
    "OdinNotConfigured",
    "OdinRequest",
    "RelayConnection",
    "RelayInfo",
    "TokenIdentity",
    "open_neighbours",
]

_CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Neighbours:
    """One client per neighbour service."""

    odin: OdinClient
    heimdall: HeimdallClient
    bifrost: BifrostClient


@asynccontextmanager
async def open_neighbours(island: Island, settings: RpcSettings) -> AsyncIterator[Neighbours]:
    """Clients for the configured neighbours (defaults for the others), on `island`; their
    channels are closed when the block ends."""
    odin = GrpcOdin(island, settings.odin) if settings.odin.address else OdinNotConfigured()
    heimdall = (
        GrpcHeimdall(island, settings.heimdall) if settings.heimdall.address else HeimdallNotConfigured()
    )
    bifrost = GrpcBifrost(island, settings.bifrost) if settings.bifrost.address else BifrostNotConfigured()
    try:
        yield Neighbours(odin, heimdall, bifrost)
    finally:
        channels: list[NeighbourChannel | None] = [
            getattr(client, "channel", None) for client in (odin, heimdall, bifrost)
        ]
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(_CLOSE_TIMEOUT_S),
            contextlib.suppress(Unavailable),  # the island already stopped: nothing left open
        ):
            await island.run(close_channels, *channels)
