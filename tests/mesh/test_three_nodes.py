"""Three `asgard serve` processes on loopback form a mesh from static peers and route between them:
a device on A and one on C exchange messages both ways, a broadcast reaches every device once, and
a device that moves from A to B keeps receiving (including what was queued for it while offline)."""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager, AsyncExitStack

import trio

from node.client import DeviceClient, open_device_client
from tests.mesh.conftest import WAIT_S, MeshNode, StartNode, linked, until
from wire.device import AckStatus, FrameType, Join, group_id

TEST_TIMEOUT_S = 60


async def start_three(start_node: StartNode) -> list[MeshNode]:
    a = await start_node("a")
    b = await start_node("b", [a.mesh])
    c = await start_node("c", [a.mesh, b.mesh])
    nodes = [a, b, c]
    await until(lambda: linked(nodes, 2), "every node linked to the two others, with an RTT")
    return nodes


async def shared_network(nodes: list[MeshNode]) -> str:
    network = str((await nodes[0].post("/api/v1/networks", {"name": "home"}))["network_id"])

    async def everywhere() -> bool:
        for node in nodes:
            if (await node.http.get(f"/api/v1/networks/{network}")).status_code != 200:
                return False
        return True

    await until(everywhere, "the network replicated to every node")
    return network


def client(
    node: MeshNode, device: str, token: str, network: str
) -> AbstractAsyncContextManager[DeviceClient]:
    return open_device_client(node.relay, token=token, device_id=device, network_id=network, reconnect=False)


async def test_mesh_forms_and_routes_across_nodes(start_node: StartNode) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        a, b, c = nodes = await start_three(start_node)
        cluster = await a.cluster()
        assert {m["node_id"] for m in cluster["members"]} == {a.node_id, b.node_id, c.node_id}
        assert cluster["leader"] == a.node_id and "standalone" in cluster["detail"]
        network = await shared_network(nodes)
        dev_a, tok_a = await a.register(network, "on-a")
        dev_b, tok_b = await b.register(network, "on-b")
        dev_c, tok_c = await c.register(network, "on-c")

        async def homes_known() -> bool:
            expected = {a.node_id: 1, b.node_id: 1, c.node_id: 1}
            return all([await n.owners() == expected for n in nodes])

        await until(homes_known, "every node knows every device's home")
        async with AsyncExitStack() as stack:
            on_a = await stack.enter_async_context(client(a, dev_a, tok_a, network))
            on_b = await stack.enter_async_context(client(b, dev_b, tok_b, network))
            on_c = await stack.enter_async_context(client(c, dev_c, tok_c, network))

            ack = await on_a.send(on_c.device_id, b"a->c")
            assert ack is not None and ack.status == AckStatus.FORWARDED
            got = await on_c.receive()
            assert (got.payload, got.source) == (b"a->c", on_a.device_id)
            await on_c.send(on_a.device_id, b"c->a")
            got = await on_a.receive()
            assert (got.payload, got.source) == (b"c->a", on_c.device_id)

            ack = await on_a.send(on_a.network_id.bytes, b"all", kind=FrameType.BROADCAST)
            assert ack is not None and ack.status == AckStatus.FORWARDED and ack.recipients == 2
            for receiver in (on_b, on_c):
                got = await receiver.receive()
                assert (got.type, got.payload) == (FrameType.BROADCAST, b"all")
                # a marker after the broadcast on the same link: no second copy came before it
                await on_a.send(receiver.device_id, b"marker")
                assert (await receiver.receive()).payload == b"marker"
            fanout = [(await n.mesh_stats())["routing"] for n in nodes]
            assert sum(r["fanout_delivered"] for r in fanout) == 2
            assert all(r["dropped"].get("duplicate", 0) == 0 for r in fanout)

            # multicast: the group's members are on B and C; A knows nothing of the group
            for member in (on_b, on_c):
                await member.control(Join(network_id=member.network_id, group="lights"))
            lights = group_id(on_a.network_id, "lights")
            ack = await on_a.send(lights, b"lights", kind=FrameType.MULTICAST)
            assert ack is not None and ack.status == AckStatus.FORWARDED
            for receiver in (on_b, on_c):
                got = await receiver.receive()
                assert (got.type, got.payload) == (FrameType.MULTICAST, b"lights")

            # DURABLE broadcast: queued at A for the members homed on B and C, handed off to them
            ack = await on_a.send(on_a.network_id.bytes, b"kept", kind=FrameType.BROADCAST, durable=True)
            assert ack is not None and ack.status == AckStatus.QUEUED and ack.recipients == 2
            for receiver in (on_b, on_c):
                got = await receiver.receive()
                assert (got.type, got.payload, got.durable) == (FrameType.BROADCAST, b"kept", True)
                await on_a.send(receiver.device_id, b"marker")
                assert (await receiver.receive()).payload == b"marker"
            assert on_b.duplicates == on_c.duplicates == 0
            await on_a.aclose()
            await stack.aclose()
        await moving_device_keeps_receiving(a, b, c, network, dev_a, dev_c, tok_c)


async def moving_device_keeps_receiving(
    a: MeshNode, b: MeshNode, c: MeshNode, network: str, dev_a: str, dev_c: str, tok_c: str
) -> None:
    """dev_a leaves A; a DURABLE message for it waits at its home (A); it reconnects on B, becomes
    B's device everywhere, gets the queued message (handed from A to B) and new ones over B."""

    tok_a_on_b = await b.token_for(dev_a, network)
    handed_off = (await a.mesh_stats())["routing"]["handed_off"]
    async with client(c, dev_c, tok_c, network) as on_c:
        ack = await on_c.send(uuid.UUID(dev_a), b"while away", durable=True)
        assert ack is not None and ack.status in (AckStatus.FORWARDED, AckStatus.QUEUED)
        async with client(b, dev_a, tok_a_on_b, network) as moved:

            async def moved_home() -> bool:
                return all([(await n.owners()).get(b.node_id) == 2 for n in (a, b, c)])

            await until(moved_home, "every node sees the device's new home (B)")
            with trio.fail_after(WAIT_S):
                got = await moved.receive()
            assert got.payload == b"while away" and got.durable
            ack = await on_c.send(moved.device_id, b"after the move")
            assert ack is not None and ack.status == AckStatus.FORWARDED
            assert (await moved.receive()).payload == b"after the move"
    routing = (await a.mesh_stats())["routing"]
    assert routing["handed_off"] == handed_off + 1
