"""Sessions and a directory for router tests, without sockets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

from node.router import DeliveryState, Outbox, Router, RoutingTable, Session
from wire.device import capability_id


class FakeDirectory:
    """Registered devices that are not connected: device id -> networks."""

    def __init__(self) -> None:
        self.devices: dict[bytes, frozenset[bytes]] = {}

    def device_networks(self, device_id: bytes) -> frozenset[bytes] | None:
        return self.devices.get(device_id)


def new_id() -> bytes:
    return os.urandom(16)


MakeSession = Callable[..., Session]


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable()


@pytest.fixture
def router(table: RoutingTable, directory: FakeDirectory) -> Router:
    return Router(table, directory)


@pytest.fixture
def closed() -> list[tuple[bytes, int, str]]:
    """(device id, code, reason) of every session the router asked to close."""
    return []


@pytest.fixture
def make_session(table: RoutingTable, closed: list[tuple[bytes, int, str]]) -> MakeSession:
    """A registered session: `make_session(networks=[n], reach=None, caps=["tts"], outbox=(msgs, bytes))`."""

    def make(
        *,
        networks: list[bytes],
        reach: list[bytes] | None = None,
        caps: tuple[str, ...] = (),
        outbox: tuple[int, int] = (100, 1 << 20),
        max_inflight: int = 100,
        add: bool = True,
    ) -> Session:
        device = new_id()
        session = Session(
            device_id=device,
            device_text=str(uuid.UUID(bytes=device)),
            session_id="s-" + device.hex()[:8],
            networks=frozenset(networks),
            reach=None if reach is None else frozenset(reach),
            capabilities=tuple(capability_id(c) for c in caps),
            outbox=Outbox(*outbox),
            delivery=DeliveryState(max_inflight),
            close=lambda code, reason: closed.append((device, code, reason)),
        )
        if add:
            table.add(session)
        return session

    return make
