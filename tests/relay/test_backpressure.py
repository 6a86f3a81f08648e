"""Zero copy (object identity from receive to send), slow consumers, write deadline, isolation."""

from __future__ import annotations

import trio

from node.client import NackError
from node.relay import DeviceLink
from node.relay._wsconn import WsConnection
from tests.relay.conftest import StartRelay
from tests.relay.helpers import RelayEnv, deadline
from tests.relay.test_session import register
from wire.device import AckStatus, FrameType, Registered, Welcome


async def test_the_received_bytes_object_is_what_the_receivers_socket_gets(
    env: RelayEnv, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    received: list[bytes] = []
    sent: list[bytes] = []
    original_receive, original_send = WsConnection.receive_batch, WsConnection.send_batch
    original_send_nowait = WsConnection.send_batch_nowait

    async def receive_batch(self: WsConnection) -> list[bytes]:
        batch = await original_receive(self)
        received.extend(batch)
        return batch

    async def send_batch(self: WsConnection, messages: list[bytes]) -> None:
        sent.extend(messages)
        await original_send(self, messages)

    def send_batch_nowait(self: WsConnection, messages: list[bytes]) -> bool:
        taken = original_send_nowait(self, messages)
        if taken:
            sent.extend(messages)
        return taken

    monkeypatch.setattr(WsConnection, "receive_batch", receive_batch)
    monkeypatch.setattr(WsConnection, "send_batch", send_batch)
    monkeypatch.setattr(WsConnection, "send_batch_nowait", send_batch_nowait)
    a, b, c = [await env.device() for _ in range(3)]
    ca, cb, cc = [await env.client(d) for d in (a, b, c)]
    async with deadline():
        await ca.send(b.device_id, b"zero-copy direct", durable=False)
        await cb.receive()
        await ca.send(env.network_id, b"zero-copy broadcast", kind=FrameType.BROADCAST)
        await cb.receive()
        await cc.receive()
        await ca.send(b.device_id, b"zero-copy durable", durable=True)
        await cb.receive()
    for payload, copies in ((b"zero-copy direct", 1), (b"zero-copy broadcast", 2), (b"zero-copy durable", 1)):
        incoming = [r for r in received if r.endswith(payload)]
        outgoing = [s for s in sent if s.endswith(payload)]
        assert len(incoming) == 1
        assert len(outgoing) == copies
        assert all(s is incoming[0] for s in outgoing), payload  # the very same object
    stats = env.relay.statistics()
    assert stats["delivered_by_reference"] >= 4
    assert stats["redelivered_copies"] == 0


async def test_a_slow_consumer_is_dropped_then_closed_while_others_flow(start_relay: StartRelay) -> None:
    env = await start_relay(
        **{
            "relay.outbox_max_messages": 20,
            "relay.websocket.write_timeout_s": 1.0,
        }
    )
    a, slow, c, d = [await env.device() for _ in range(4)]
    ca, cc, cd = await env.client(a), await env.client(c), await env.client(d)
    closed = trio.Event()

    def on_closed(link: DeviceLink) -> None:
        if link.session is not None and link.session.device_id == slow.raw_id:
            closed.set()

    env.relay.on_link_closed(on_closed)
    payload = b"x" * 60_000
    async with deadline(30):
        stuck = await env.raw(token=slow.token)  # registers, then never reads again
        assert isinstance(await stuck.control(), Welcome)
        await stuck.send(register(slow.device_id, env.network_id))
        assert isinstance(await stuck.control(), Registered)
        refusal = ""
        while not refusal:  # kernel buffers fill, then the outbox, then the node says so
            try:
                await ca.send(slow.device_id, payload)
            except NackError as exc:
                refusal = exc.slug
        assert refusal == "resource-exhausted"
        ack = await ca.send(slow.device_id, b"durable waits", durable=True)
        assert ack is not None and ack.status == AckStatus.QUEUED
        for i in range(100):  # meanwhile a fast pair is not slowed down
            await cc.send(d.device_id, i.to_bytes(2, "big"))
            assert (await cd.receive()).payload == i.to_bytes(2, "big")
        await closed.wait()  # the write deadline closes the stuck consumer
    stats = env.relay.statistics()
    assert stats["dropped"]["outbox_full"] >= 1
    assert stats["closes"]["1008"] == 1
    assert slow.raw_id not in env.relay.table.sessions
    cs = await env.client(slow)  # the durable one is still there
    async with deadline():
        assert (await cs.receive()).payload == b"durable waits"
