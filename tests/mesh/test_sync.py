"""Registry sync between two real stores: stamping local changes, applying peers' records (networks
before devices), conflicting registrations, anti-entropy after missed messages, tombstones."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from node.clock import WallClock
from node.config import StoreSettings
from node.mesh._peer_model import Housekeeping, PeerMessage, RecordData, Records
from node.mesh._sync import Sync
from node.mesh.settings import SyncSettings
from node.storage import Storage, open_storage
from store import mesh as rows_db
from store import registry as reg
from store.records import Device, Network

SETTINGS = SyncSettings(poll_interval_s=0.01, anti_entropy_interval_s=3600, tombstone_ttl_s=60)


@dataclass
class _Stream:
    def consumed(self, count: int = 1) -> None:
        pass


@dataclass
class Wire:
    """A link to `to` that delivers at once, or drops everything while `up` is False."""

    peer_id: str
    to: Sync | None = None
    back: Wire | None = None
    up: bool = True
    stream: _Stream = field(default_factory=_Stream)
    sent: list[PeerMessage] = field(default_factory=list)

    def send(self, message: PeerMessage) -> bool:
        self.sent.append(message)
        if self.up and self.to is not None:
            self.to.receive(self.back, message)  # type: ignore[arg-type]
        return True

    def drop(self, reason: str) -> None:
        pass


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Sync, Sync, Wire]]:
    """Two nodes' syncs on their own stores, linked by a Wire each way; returns (n1, n2, wire 1->2)."""
    settings = StoreSettings(checkpoint_interval_s=3600)
    async with (
        open_storage(tmp_path / "n1.db", settings) as s1,
        open_storage(tmp_path / "n2.db", settings) as s2,
    ):
        to_2, to_1 = Wire("node-2"), Wire("node-1")
        n1 = Sync("node-1", s1, WallClock(), SETTINGS, lambda: [to_2])
        n2 = Sync("node-2", s2, WallClock(), SETTINGS, lambda: [to_1])
        to_2.to, to_2.back, to_1.to, to_1.back = n2, to_1, n1, to_2
        n1.load()
        n2.load()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n1.run)
            nursery.start_soon(n2.run)
            yield n1, n2, to_2
            nursery.cancel_scope.cancel()


def _network(conn: Any, network_id: str, name: str = "home") -> None:
    reg.insert_network(conn, Network(network_id, name, 1000.0, None))


def _device(conn: Any, device_id: str, network_id: str, name: str) -> None:
    reg.insert_device(
        conn, Device(device_id, network_id, name, "physical", (), {}, 1000.0, 1000.0, 1000.0, "online")
    )
    reg.add_member(conn, network_id, device_id, 1000.0)


def names(storage: Storage) -> dict[str, str]:
    def read(conn: Any) -> dict[str, str]:
        return {str(r[0]): str(r[1]) for r in conn.execute("SELECT device_id, name FROM devices")}

    return storage.read(read)


async def settled(*syncs: Sync) -> None:
    """Wait (bounded) until every sync has stamped its changes and handled its inbox."""
    with trio.fail_after(10):
        for _ in range(5):
            for sync in syncs:
                await sync.stamp_local()
            await trio.sleep(0.05)


async def test_a_local_change_replicates_networks_first(pair: tuple[Sync, Sync, Wire]) -> None:
    n1, n2, _ = pair
    net, dev = str(uuid.uuid4()), str(uuid.uuid4())
    await n1.storage.write(_network, net)
    await n1.storage.write(_device, dev, net, "lamp")
    await settled(n1, n2)
    assert names(n2.storage) == {dev: "lamp"}
    assert n2.index.owners[uuid.UUID(dev).bytes] == "node-1"
    assert n1.index.digests == n2.index.digests
    assert n2.storage.read(rows_db.all_meta) == n1.storage.read(rows_db.all_meta)


async def test_a_device_before_its_network_waits_then_applies(pair: tuple[Sync, Sync, Wire]) -> None:
    n1, n2, wire = pair
    wire.up = False  # n2 gets the records below by hand, in the wrong order
    net, dev = str(uuid.uuid4()), str(uuid.uuid4())
    await n1.storage.write(_network, net)
    await n1.storage.write(_device, dev, net, "lamp")
    await n1.stamp_local()
    rows = {r.kind: r for r in n1.storage.read(rows_db.get_rows, [("network", net), ("device", dev)])}
    n2.receive(pair[2].back, Records((RecordData(*rows["device"]),)))  # type: ignore[arg-type]
    await settled(n2)
    assert n2.storage.read(rows_db.pending_count) == 1 and names(n2.storage) == {}
    n2.receive(pair[2].back, Records((RecordData(*rows["network"]),)))  # type: ignore[arg-type]
    await settled(n2)
    assert n2.storage.read(rows_db.pending_count) == 0 and names(n2.storage) == {dev: "lamp"}


async def test_a_partition_heals_by_anti_entropy_to_one_record(pair: tuple[Sync, Sync, Wire]) -> None:
    n1, n2, wire = pair
    net = str(uuid.uuid4())
    await n1.storage.write(_network, net)
    await settled(n1, n2)
    wire.up = wire.back.up = False  # type: ignore[union-attr]
    twice, only_1, only_2 = (str(uuid.uuid4()) for _ in range(3))
    await n1.storage.write(_device, twice, net, "one")
    await n2.storage.write(_device, twice, net, "two")
    await n1.storage.write(_device, only_1, net, "x")
    await n2.storage.write(_device, only_2, net, "y")
    await settled(n1, n2)
    assert names(n1.storage) != names(n2.storage)
    wire.up = wire.back.up = True  # type: ignore[union-attr]
    n1.link_opened(wire)  # type: ignore[arg-type]
    n2.link_opened(wire.back)  # type: ignore[arg-type]
    await settled(n1, n2)
    assert names(n1.storage) == names(n2.storage)
    assert set(names(n1.storage)) == {twice, only_1, only_2}
    assert n1.index.digests == n2.index.digests
    assert n1.stats.pushed + n2.stats.pushed >= 3


async def test_a_deletion_replicates_and_its_tombstone_is_collected(pair: tuple[Sync, Sync, Wire]) -> None:
    n1, n2, _ = pair
    net, dev = str(uuid.uuid4()), str(uuid.uuid4())
    await n1.storage.write(_network, net)
    await n1.storage.write(_device, dev, net, "lamp")
    await settled(n1, n2)
    await n1.storage.write(reg.delete_device, dev)
    await settled(n1, n2)
    assert names(n2.storage) == {}
    meta = n2.index.get(("device", dev))
    assert meta is not None and meta.deleted and uuid.UUID(dev).bytes not in n2.index.owners
    assert await n2.collect_tombstones() == 0  # younger than tombstone_ttl_s
    n2.apply_settings(SETTINGS.model_copy(update={"tombstone_ttl_s": 0.001}))
    await trio.sleep(0.01)
    leader = Wire("node-1")
    n2._housekeeping(leader, Housekeeping("node-1", 7, 0))  # type: ignore[arg-type]
    assert await n2.collect_tombstones() == 0  # the leader's horizon holds it back
    n2._housekeeping(leader, Housekeeping("node-1", 6, 2**62))  # type: ignore[arg-type]
    assert n2.leader_horizon == (7, 0)  # an order of an older term is fenced out
    n2._housekeeping(Wire("node-3"), Housekeeping("node-1", 8, 2**62))  # type: ignore[arg-type]
    assert n2.leader_horizon == (7, 0)  # only the leader itself may give its order
    n2._housekeeping(leader, Housekeeping("node-1", 8, 2**62))  # type: ignore[arg-type]
    assert await n2.collect_tombstones() == 1
    assert n2.index.get(("device", dev)) is None
    assert n2.storage.read(rows_db.get_rows, [("device", dev)]) == []
