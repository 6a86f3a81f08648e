"""Durability with a real process: SIGKILL the node while senders stream DURABLE messages to an
offline device; after a restart on the same store every message whose ACK a sender received is
delivered, in order per sender, and nothing is delivered twice in one session."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import trio

from node.client import ClientSettings, ConnectionLost, DeviceClient
from tests.e2e.nodeproc import NodeProcess, node_env, start_node_process

SENDERS = 3
KILL_AFTER_ACKS = 150
TIMEOUT_S = 60


async def setup(node: NodeProcess) -> tuple[str, str, list[tuple[str, str]]]:
    """A network, the receiver (registered, offline) and the senders, with device tokens."""
    headers = {"Authorization": f"Bearer {node.announcement['admin_token']}"}
    async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as api:
        net = (await api.post("/api/v1/networks", json={"name": "home"})).json()["network_id"]
        devices = []
        for _ in range(SENDERS + 1):
            device = str(uuid.uuid4())
            r = await api.post(
                "/api/v1/devices", json={"device_id": device, "network_id": net, "world_type": "physical"}
            )
            assert r.status_code == 201, r.text
            body = {"name": "dev", "role": "device", "device_id": device, "networks": [net]}
            token = (await api.post("/api/v1/tokens", json=body)).json()["token"]
            devices.append((device, token))
    return net, devices[0][0], devices


def client(url: str, device: tuple[str, str], net: str) -> DeviceClient:
    return DeviceClient(
        url, token=device[1], device_id=device[0], network_id=net, settings=ClientSettings(reconnect=False)
    )


@pytest.mark.slow
async def test_acknowledged_durable_messages_survive_sigkill(tmp_path: Path, nursery: trio.Nursery) -> None:
    env = node_env(tmp_path / "data")
    nodes: list[NodeProcess] = []
    try:
        with trio.fail_after(TIMEOUT_S):
            nodes.append(await start_node_process(nursery, env, tmp_path, name="before"))
            first = nodes[0]
            net, receiver, devices = await setup(first)
            acked: dict[str, list[int]] = {d: [] for d, _ in devices[1:]}
            enough = trio.Event()

            async def stream(sender: DeviceClient) -> None:
                n = 0
                try:
                    while True:
                        await sender.send(
                            uuid.UUID(receiver), f"{sender.device_id}:{n}".encode(), durable=True
                        )
                        acked[str(sender.device_id)].append(n)
                        n += 1
                        if sum(map(len, acked.values())) >= KILL_AFTER_ACKS:
                            enough.set()
                except ConnectionLost:
                    return

            async with trio.open_nursery() as streams:
                for device in devices[1:]:
                    sender = client(first.announcement["relay"], device, net)
                    await streams.start(sender.run)
                    streams.start_soon(stream, sender)
                await enough.wait()
                first.kill_group()  # while the senders are still streaming
                assert await first.process.wait() == -9
            nodes.append(await start_node_process(nursery, env, tmp_path, name="after"))
            second = nodes[1]
            rx = client(second.announcement["relay"], devices[0], net)
            await nursery.start(rx.run)
            assert rx.registered is not None
            queued = rx.registered.queued
            received: dict[str, list[int]] = {d: [] for d in acked}
            for _ in range(queued):
                message = await rx.receive()
                sender_id, n = message.payload.decode().split(":")
                received[sender_id].append(int(n))
                assert message.redelivered
            await rx.aclose()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            for node in nodes:
                node.kill_group()
                await node.process.wait()
    assert sum(map(len, acked.values())) >= KILL_AFTER_ACKS
    for sender_id, numbers in acked.items():
        got = received[sender_id]
        assert got == sorted(got), f"{sender_id}: out of order"
        assert len(got) == len(set(got)), "the store holds each message once"
        assert set(numbers) <= set(got), (
            f"{sender_id}: acknowledged but lost: {sorted(set(numbers) - set(got))}"
        )
        assert got == list(range(len(got)))  # at most the in-flight unacknowledged tail is extra
    assert rx.duplicates == 0
