"""Routing through a live node: direct, broadcast, multicast, anycast, reach, groups, events."""

from __future__ import annotations

import uuid

import pytest
import trio

from node.auth import SYSTEM, Role
from node.client import NackError
from tests.relay.helpers import RelayEnv, deadline
from wire.device import (
    AckStatus,
    AnycastPolicy,
    FrameType,
    Join,
    Leave,
    Subscribe,
    Unsubscribe,
    capability_id,
    group_id,
)


async def test_direct_with_and_without_ack(env: RelayEnv) -> None:
    a, b = await env.device(), await env.device()
    ca, cb = await env.client(a), await env.client(b)
    async with deadline():
        ack = await ca.send(b.device_id, b"hello")
        assert ack is not None and (ack.status, ack.recipients) == (AckStatus.DELIVERED, 1)
        got = await cb.receive()
        assert (got.payload, got.source, got.type) == (b"hello", a.device_id, FrameType.DIRECT)
        assert await ca.send(b.device_id, b"quiet", ack=False) is None
        assert (await cb.receive()).payload == b"quiet"
        ack = await cb.send(a.device_id, b"back")
        assert (await ca.receive()).payload == b"back"


async def test_the_receiver_gets_the_senders_bytes_unchanged(env: RelayEnv) -> None:
    a, b = await env.device(), await env.device()
    ca, cb = await env.client(a), await env.client(b)
    payload = bytes(range(256)) * 100
    async with deadline():
        await ca.send(b.device_id, payload)
        got = await cb.receive()
    assert got.payload == payload
    assert got.raw[:2] == b"\x01\x10"


async def test_direct_refusals(env: RelayEnv) -> None:
    other_net = await env.network()
    a = await env.device()
    stranger = await env.device(other_net)
    ca = await env.client(a)
    await env.client(stranger)
    offline = await env.device()
    await env.handle.registry.register_device(SYSTEM, _spec(offline.device_id, env.network_id))
    async with deadline():
        with pytest.raises(NackError) as info:
            await ca.send(uuid.uuid4(), b"x")
        assert info.value.slug == "unknown-device"
        with pytest.raises(NackError) as info:
            await ca.send(stranger.device_id, b"x")
        assert info.value.slug == "permission-denied"
        with pytest.raises(NackError) as info:
            await ca.send(offline.device_id, b"x")
        assert info.value.slug == "no-recipient"
        await ca.send(offline.device_id, b"x", ack=False)  # a refusal is answered anyway:
        await ca.send(a.device_id, b"to myself")  # replies come in order, so it has arrived
        assert [n.slug for n in ca.unsolicited_nacks] == ["no-recipient"]
        assert (await ca.receive()).payload == b"to myself"


async def test_a_service_token_reaches_every_network(env: RelayEnv) -> None:
    other_net = await env.network()
    service = await env.device(role=Role.SERVICE)
    far = await env.device(other_net)
    cs, cf = await env.client(service), await env.client(far)
    async with deadline():
        await cs.send(far.device_id, b"ops")
        assert (await cf.receive()).payload == b"ops"
        with pytest.raises(NackError) as info:
            await cf.send(service.device_id, b"x")  # the device token stays in its network
        assert info.value.slug == "permission-denied"


async def test_broadcast_reaches_the_network_but_not_the_sender(env: RelayEnv) -> None:
    other_net = await env.network()
    a, b, c = [await env.device() for _ in range(3)]
    far = await env.device(other_net)
    ca, cb, cc, cf = [await env.client(d) for d in (a, b, c, far)]
    async with deadline():
        ack = await ca.send(env.network_id, b"all", kind=FrameType.BROADCAST)
        assert ack is not None and ack.recipients == 2
        assert (await cb.receive()).payload == b"all"
        assert (await cc.receive()).payload == b"all"
        with pytest.raises(NackError) as info:
            await ca.send(other_net, b"no", kind=FrameType.BROADCAST)
        assert info.value.slug == "permission-denied"
        await cf.send(other_net, b"alone", kind=FrameType.BROADCAST, ack=False)
        with pytest.raises(NackError) as info:
            await cf.send(other_net, b"alone", kind=FrameType.BROADCAST)
        assert info.value.slug == "no-recipient"
    with trio.move_on_after(0.2):
        unexpected = await ca.receive()
        pytest.fail(f"the sender got its own broadcast: {unexpected}")


async def test_multicast_join_leave(env: RelayEnv) -> None:
    a, b, c = [await env.device() for _ in range(3)]
    ca, cb, cc = [await env.client(d) for d in (a, b, c)]
    gid = group_id(env.network_id, "kitchen")
    async with deadline():
        with pytest.raises(NackError) as info:
            await ca.send(gid, b"x", kind=FrameType.MULTICAST)
        assert info.value.slug == "no-recipient"
        for client in (ca, cb):
            await client.control(Join(network_id=env.network_id, group="kitchen"))
        ack = await ca.send(gid, b"dinner", kind=FrameType.MULTICAST)
        assert ack is not None and ack.recipients == 1
        assert (await cb.receive()).payload == b"dinner"
        await cb.control(Leave(network_id=env.network_id, group="kitchen"))
        with pytest.raises(NackError) as info:
            await cb.control(Leave(network_id=env.network_id, group="kitchen"))
        assert info.value.slug == "not-found"
        with pytest.raises(NackError) as info:
            await ca.send(gid, b"x", kind=FrameType.MULTICAST)
        assert info.value.slug == "no-recipient"
        other = await env.network()
        with pytest.raises(NackError) as info:
            await cc.control(Join(network_id=other, group="kitchen"))
        assert info.value.slug == "not-found"


async def test_anycast_round_robin_and_least_outstanding(env: RelayEnv) -> None:
    a = await env.device()
    ca = await env.client(a)
    speakers = [await env.device() for _ in range(2)]
    clients = [await env.client(d, capabilities=("speaker",)) for d in speakers]
    cap = capability_id("speaker")
    async with deadline():
        for i in range(4):
            await ca.send(cap, f"rr{i}".encode(), kind=FrameType.ANYCAST, policy=AnycastPolicy.ROUND_ROBIN)
        got = [[(await c.receive()).payload for _ in range(2)] for c in clients]
        assert sorted(got) == [[b"rr0", b"rr2"], [b"rr1", b"rr3"]]
        for _ in range(3):
            ack = await ca.send(cap, b"lo", kind=FrameType.ANYCAST, policy=AnycastPolicy.LEAST_OUTSTANDING)
            assert ack is not None and ack.status == AckStatus.DELIVERED
        with pytest.raises(NackError) as info:
            await ca.send(capability_id("nobody"), b"x", kind=FrameType.ANYCAST)
        assert info.value.slug == "no-recipient"


async def test_events_for_subscribed_networks_and_devices(env: RelayEnv) -> None:
    watcher = await env.device()
    cw = await env.client(watcher)
    async with deadline():
        await cw.control(Subscribe(network_id=env.network_id))
        b = await env.device()
        await env.client(b)
        ev = await cw.events()
        while ev.device_id != b.device_id:
            ev = await cw.events()
        assert (ev.event, ev.status, ev.network_id) == ("registered", "online", env.network_id)
        await cw.control(Unsubscribe())
        await cw.control(Subscribe(devices=(b.device_id,)))
        await env.handle.registry.unregister_device(SYSTEM, str(b.device_id))
        ev = await cw.events()
        assert (ev.event, ev.device_id, ev.status) == ("unregistered", b.device_id, "offline")
        with pytest.raises(NackError) as info:
            await cw.control(Subscribe(network_id=await env.network()))
        assert info.value.slug == "not-found"


def _spec(device: uuid.UUID, network: uuid.UUID):  # type: ignore[no-untyped-def]
    from node.registry import DeviceSpec

    return DeviceSpec(device_id=str(device), network_id=str(network), world_type="physical")
