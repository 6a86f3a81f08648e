"""DURABLE messages: committed before the ACK, drained in order on reconnect, deleted on DELIVERED;
queue limits, both overflow policies, TTL, durable fan-out to offline members, store failures."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

from node.auth import SYSTEM
from node.client import DeviceClient, NackError
from node.errors import StoreError
from node.registry import DeviceSpec
from store import queue as q
from tests.relay.conftest import StartRelay
from tests.relay.helpers import Device, RelayEnv, deadline
from wire.device import AckStatus, FrameType, Heartbeat, Join, group_id


async def offline(env: RelayEnv, network: uuid.UUID | None = None) -> Device:
    """A registered device that is not connected."""
    dev = await env.device(network)
    spec = DeviceSpec(device_id=str(dev.device_id), network_id=str(dev.network_id), world_type="physical")
    await env.handle.registry.register_device(SYSTEM, spec)
    return dev


async def settle(env: RelayEnv, client: DeviceClient) -> None:
    """Wait until the node has handled what `client` sent (a HEARTBEAT's ACK comes after it), then
    write the collected DELIVERED deletes."""
    await client.control(Heartbeat())
    await env.relay.queue.flush()


def depth(env: RelayEnv, dev: Device) -> q.QueueDepth:
    return env.handle.storage.read(q.depth, str(dev.device_id))


async def test_queued_while_offline_then_drained_in_order_and_deleted(env: RelayEnv) -> None:
    a, b = await env.device(), await offline(env)
    ca = await env.client(a)
    async with deadline():
        for i in range(20):
            ack = await ca.send(b.device_id, f"m{i}".encode(), durable=True)
            assert ack is not None and (ack.status, ack.recipients) == (AckStatus.QUEUED, 1)
        assert depth(env, b).messages == 20
        cb = await env.client(b)
        assert cb.registered is not None and cb.registered.queued == 20
        got = [await cb.receive() for _ in range(20)]
        assert [m.payload for m in got] == [f"m{i}".encode() for i in range(20)]
        assert all(m.redelivered and m.durable for m in got)
        await settle(env, cb)
    assert depth(env, b) == q.QueueDepth(0, 0, None)


async def test_live_durable_stays_queued_until_delivered(env: RelayEnv) -> None:
    a, b = await env.device(), await env.device()
    ca = await env.client(a)
    cb = await env.client(b, auto_delivered=False)
    async with deadline():
        ack = await ca.send(b.device_id, b"keep me", durable=True)
        assert ack is not None and ack.status == AckStatus.DELIVERED
        first = await cb.receive()
        assert not first.redelivered
        assert depth(env, b).messages == 1  # no DELIVERED yet
        await cb.aclose()
        cb2 = await env.client(b, auto_delivered=False)
        again = await cb2.receive()
        assert (again.payload, again.message_id, again.redelivered) == (b"keep me", first.message_id, True)
        await cb2.delivered(again)
        await settle(env, cb2)
    assert depth(env, b).messages == 0


async def test_order_per_sender_across_live_and_queued(env: RelayEnv) -> None:
    senders = [await env.device() for _ in range(3)]
    b = await env.device()
    clients = [await env.client(s) for s in senders]
    cb = await env.client(b)
    async with deadline(30):

        async def stream(client: DeviceClient, tag: int) -> None:
            for i in range(60):
                await client.send(b.device_id, f"{tag}:{i}".encode(), durable=True)

        async with trio.open_nursery() as nursery:
            for tag, client in enumerate(clients):
                nursery.start_soon(stream, client, tag)
            seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
            for _ in range(90):  # half of it, then reconnect mid-stream
                m = await cb.receive()
                tag, i = map(int, m.payload.split(b":"))
                seen[tag].append(i)
        await cb.aclose()
        cb = await env.client(b)
        while sum(len(v) for v in seen.values()) < 180 or any(len(set(v)) < 60 for v in seen.values()):
            m = await cb.receive()
            tag, i = map(int, m.payload.split(b":"))
            seen[tag].append(i)
    for values in seen.values():
        unique = list(dict.fromkeys(values))
        assert unique == list(range(60))  # every message, first copies in order


async def test_refuse_new_when_the_queue_is_full(start_relay: StartRelay) -> None:
    env = await start_relay(**{"relay.queue.max_messages": 3})
    a, b = await env.device(), await offline(env)
    ca = await env.client(a)
    async with deadline():
        for i in range(3):
            await ca.send(b.device_id, bytes([i]), durable=True)
        with pytest.raises(NackError) as info:
            await ca.send(b.device_id, b"too many", durable=True)
        assert info.value.slug == "queue-full"
    assert env.relay.queue.stats.refused_full == 1


async def test_drop_oldest_tells_the_sender(start_relay: StartRelay) -> None:
    env = await start_relay(**{"relay.queue.max_messages": 2, "relay.queue.overflow": "drop-oldest"})
    a, b = await env.device(), await offline(env)
    ca = await env.client(a)
    async with deadline():
        acks = [await ca.send(b.device_id, f"m{i}".encode(), durable=True) for i in range(3)]
        assert all(ack is not None and ack.status == AckStatus.QUEUED for ack in acks)
        await ca.control(Heartbeat())  # the NACK dropped came before this ACK
        dropped = [n for n in ca.unsolicited_nacks if n.slug == "dropped"]
        assert acks[0] is not None and [n.message_id for n in dropped] == [acks[0].message_id]
        cb = await env.client(b)
        assert [(await cb.receive()).payload for _ in range(2)] == [b"m1", b"m2"]


async def test_expired_messages_are_purged_never_delivered_and_the_sender_is_told(
    start_relay: StartRelay, jump_clock: trio.testing.MockClock
) -> None:
    env = await start_relay(**{"relay.queue.ttl_s": 60.0})
    a, b = await env.device(), await offline(env)
    ca = await env.client(a)
    async with deadline(100):  # virtual time: the jump counts
        old = await ca.send(b.device_id, b"old", durable=True)
        jump_clock.jump(61)
        fresh = await ca.send(b.device_id, b"fresh", durable=True)
        cb = await env.client(b)
        assert (await cb.receive()).payload == b"fresh"  # the expired one is never delivered
        await env.relay.queue.purge_expired(env.relay.removed_from_queue)  # or the purger did it
        await ca.control(Heartbeat())  # the NACK was queued before this ACK
        await settle(env, cb)
    assert env.relay.queue.stats.expired == 1
    assert old is not None and fresh is not None
    assert [(n.slug, n.message_id) for n in ca.unsolicited_nacks] == [("expired", old.message_id)]
    assert depth(env, b).messages == 0


async def test_durable_broadcast_and_multicast_reach_offline_members(env: RelayEnv) -> None:
    a, online = await env.device(), await env.device()
    away = await offline(env)
    ca, co = await env.client(a), await env.client(online)
    async with deadline():
        ack = await ca.send(env.network_id, b"to all", kind=FrameType.BROADCAST, durable=True)
        assert ack is not None and (ack.status, ack.recipients) == (AckStatus.QUEUED, 2)
        assert (await co.receive()).payload == b"to all"
        await co.control(Join(network_id=env.network_id, group="lights"))
        cw = await env.client(away)
        assert (await cw.receive()).payload == b"to all"
        await cw.control(Join(network_id=env.network_id, group="lights"))
        await cw.aclose()
        ack = await ca.send(
            group_id(env.network_id, "lights"), b"dim", kind=FrameType.MULTICAST, durable=True
        )
        assert ack is not None and (ack.status, ack.recipients) == (AckStatus.QUEUED, 2)
        assert (await co.receive()).payload == b"dim"
        cw = await env.client(away)
        assert (await cw.receive()).payload == b"dim"


async def test_memberships_survive_a_restart(start_relay: StartRelay) -> None:
    env = await start_relay()
    a, b = await env.device(), await env.device()
    cb = await env.client(b)
    async with deadline():
        await cb.control(Join(network_id=env.network_id, group="attic"))
    relay = env.relay
    relay.table.groups.clear()  # what a fresh process has before loading the store
    relay._load_groups()
    ca = await env.client(a)
    async with deadline():
        ack = await ca.send(group_id(env.network_id, "attic"), b"hi", kind=FrameType.MULTICAST)
        assert ack is not None and ack.recipients == 1


async def test_store_failure_nacks_store_error(env: RelayEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await env.device(), await offline(env)
    ca = await env.client(a)

    async def broken(items: object) -> object:
        raise StoreError("disk on fire")

    monkeypatch.setattr(env.relay.queue, "enqueue", broken)
    async with deadline():
        with pytest.raises(NackError) as info:
            await ca.send(b.device_id, b"x", durable=True)
    assert info.value.slug == "store-error"
    assert depth(env, b).messages == 0
