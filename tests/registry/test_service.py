"""Registry service: registration rules, scoping, networks, connections, status events over time."""

from __future__ import annotations

import uuid

import pytest
import trio
from trio.testing import MockClock

from node.auth import SYSTEM, Principal, Role
from node.errors import Conflict, NotFound, PermissionDenied
from node.registry import INACTIVE, OFFLINE, ONLINE, DevicePatch, DeviceSpec, Registry
from node.storage import Storage
from store.registry import DeviceFilter


def _id() -> str:
    return str(uuid.uuid4())


async def _network(reg: Registry, name: str = "home") -> str:
    return (await reg.create_network(SYSTEM, name)).network_id


async def _device(reg: Registry, network_id: str, **kw: object) -> str:
    device_id = str(kw.pop("device_id", _id()))
    spec = DeviceSpec(device_id=device_id, network_id=network_id, world_type="physical", **kw)  # type: ignore[arg-type]
    await reg.register_device(SYSTEM, spec)
    return device_id


async def test_reregistration_keeps_registered_at_and_updates_metadata(
    registry: Registry, thread_safe_autojump_clock: MockClock
) -> None:
    net = await _network(registry)
    device_id = await _device(registry, net, capabilities=("a",))
    first = registry.get_device(SYSTEM, device_id)
    await trio.sleep(100)
    spec = DeviceSpec(device_id=device_id, network_id=net, world_type="virtual", capabilities=("b",))
    device, created = await registry.register_device(SYSTEM, spec)
    assert not created
    assert device.registered_at == first.registered_at
    assert device.updated_at >= first.updated_at + 100
    assert device.capabilities == ("b",)
    assert device.world_type == "virtual"


async def test_other_network_needs_move(registry: Registry) -> None:
    a, b = await _network(registry, "a"), await _network(registry, "b")
    device_id = await _device(registry, a)
    spec = DeviceSpec(device_id=device_id, network_id=b, world_type="physical")
    with pytest.raises(Conflict, match="move"):
        await registry.register_device(SYSTEM, spec)
    device, _ = await registry.register_device(SYSTEM, spec, move=True)
    assert device.network_id == b
    assert device.networks == (b,)


async def test_device_token_sees_only_its_networks(registry: Registry) -> None:
    a, b = await _network(registry, "a"), await _network(registry, "b")
    mine = await _device(registry, a)
    theirs = await _device(registry, b)
    who = Principal("tok_x", Role.DEVICE, device_id=mine, networks=(a,))
    assert registry.get_device(who, mine).device_id == mine
    with pytest.raises(NotFound):
        registry.get_device(who, theirs)
    with pytest.raises(NotFound):
        registry.get_network(who, b)
    items, _ = registry.list_devices(who, DeviceFilter(), after=None, limit=10)
    assert [d.device_id for d in items] == [mine]
    with pytest.raises(PermissionDenied):
        await registry.update_device(
            Principal("tok_y", Role.DEVICE, device_id=_id(), networks=(a,)), mine, DevicePatch(name="x")
        )
    viewer = Principal("tok_v", Role.VIEWER)
    with pytest.raises(PermissionDenied):
        await registry.heartbeat(viewer, mine)


async def test_device_networks_match_get_device_within_each_scope(registry: Registry) -> None:
    a, b, c = await _network(registry, "a"), await _network(registry, "b"), await _network(registry, "c")
    shared = await _device(registry, a)
    await registry.add_member(SYSTEM, c, shared)
    await registry.add_member(SYSTEM, b, shared)
    callers = [
        SYSTEM,
        Principal("tok_s", Role.SERVICE, networks=(b,)),
        Principal("tok_d", Role.DEVICE, device_id=shared, networks=(a, c)),
    ]
    for who in callers:
        assert registry.device_networks(who, shared) == registry.get_device(who, shared).networks
    assert registry.device_networks(SYSTEM, shared) == tuple(sorted((a, b, c)))
    assert registry.device_networks(callers[1], shared) == (b,)
    outsider = Principal("tok_o", Role.SERVICE, networks=(await _network(registry, "d"),))
    for who, device_id in ((outsider, shared), (SYSTEM, _id())):
        with pytest.raises(NotFound):
            registry.device_networks(who, device_id)


async def test_pagination_walks_every_device_once(registry: Registry) -> None:
    net = await _network(registry)
    ids = {await _device(registry, net) for _ in range(23)}
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = registry.list_devices(SYSTEM, DeviceFilter(network_id=net), after=cursor, limit=5)
        seen += [d.device_id for d in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)


async def test_network_delete_refused_then_forced(registry: Registry) -> None:
    a, b = await _network(registry, "a"), await _network(registry, "b")
    only_a = await _device(registry, a)
    both = await _device(registry, a)
    await registry.add_member(SYSTEM, b, both)
    with pytest.raises(Conflict, match="force"):
        await registry.delete_network(SYSTEM, a)
    removed = await registry.delete_network(SYSTEM, a, force=True)
    assert removed == [only_a]
    assert registry.get_device(SYSTEM, both).network_id == b
    with pytest.raises(NotFound):
        registry.get_device(SYSTEM, only_a)


async def test_connections_lifecycle(registry: Registry) -> None:
    net = await _network(registry)
    a, b = await _device(registry, net), await _device(registry, net)
    conn = await registry.open_connection(SYSTEM, a, b)
    assert conn.status == "open"
    assert (
        await registry.heartbeat_connection(SYSTEM, conn.connection_id)
    ).last_heartbeat >= conn.last_heartbeat
    closed = await registry.close_connection(SYSTEM, conn.connection_id)
    assert closed.status == "closed"
    with pytest.raises(Conflict):
        await registry.heartbeat_connection(SYSTEM, conn.connection_id)
    topo = registry.topology(SYSTEM, net, limit=100)
    assert {d.device_id for d in topo.devices} == {a, b}
    assert topo.connections == []


async def test_status_follows_missed_heartbeats(
    registry: Registry, thread_safe_autojump_clock: MockClock
) -> None:
    net = await _network(registry)
    async with registry.subscribe() as events:
        device_id = await _device(registry, net)
        registered_at = trio.current_time()
        assert (await events.receive()).kind == "registered"
        inactive = await events.receive()
        assert (inactive.kind, inactive.old, inactive.new) == ("status", ONLINE, INACTIVE)
        assert trio.current_time() - registered_at == pytest.approx(90, abs=0.1)
        offline = await events.receive()
        assert (offline.old, offline.new) == (INACTIVE, OFFLINE)
        assert trio.current_time() - registered_at == pytest.approx(300, abs=0.1)
        assert registry.get_device(SYSTEM, device_id).status == OFFLINE
        await registry.heartbeat(SYSTEM, device_id)
        back = await events.receive()
        assert (back.old, back.new) == (OFFLINE, ONLINE)
        assert registry.get_device(SYSTEM, device_id).status == ONLINE


async def test_statuses_persist_and_reload(
    storage: Storage, registry: Registry, thread_safe_autojump_clock: MockClock
) -> None:
    net = await _network(registry)
    async with registry.subscribe() as events:
        device_id = await _device(registry, net)
        while (await events.receive()).new != INACTIVE:
            pass
    await registry.flush_last_seen()
    stored = storage.read(
        lambda conn: conn.execute("SELECT status FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    )
    assert stored == (INACTIVE,)


async def test_live_threshold_change(registry: Registry, thread_safe_autojump_clock: MockClock) -> None:
    net = await _network(registry)
    async with registry.subscribe() as events:
        await _device(registry, net)
        await events.receive()
        start = trio.current_time()
        registry.apply(registry.settings.model_copy(update={"heartbeat_interval_s": 1.0}))
        change = await events.receive()
        assert change.new == INACTIVE
        assert trio.current_time() - start < 5
