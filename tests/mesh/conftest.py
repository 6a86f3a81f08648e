"""Mesh nodes as separate `asgard serve` processes on loopback, each with its own store and config.

A node's `[mesh]` section lives in its config file (so a test can rewrite it and the node applies
it live); everything else comes from the environment (`tests.e2e.nodeproc.node_env`: every
listener on 127.0.0.1 port 0, the mesh listener too). Nodes find each other through the addresses
in their JSON line: a later node lists the earlier ones' mesh addresses as static peers, and links
work both ways.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.nodeproc import NodeProcess, node_env, start_node_process

SECRET = "mesh-test-secret-0123456789abcdef"
WAIT_S = 20.0
STOP_S = 10.0


@dataclass
class MeshNode:
    """A running node of the test cluster."""

    name: str
    process: NodeProcess
    config: Path
    http: httpx.AsyncClient

    @property
    def announcement(self) -> dict[str, Any]:
        return self.process.announcement

    @property
    def node_id(self) -> str:
        return str(self.announcement["node_id"])

    @property
    def mesh(self) -> str:
        """host:port of the node's mesh listener (what peers dial)."""
        return str(self.announcement["mesh"])

    @property
    def relay(self) -> str:
        return str(self.announcement["relay"])

    async def get(self, path: str) -> Any:
        response = await self.http.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    async def post(self, path: str, body: dict[str, Any], expect: int = 201) -> Any:
        response = await self.http.post(path, json=body)
        assert response.status_code == expect, response.text
        return response.json() if response.content else None

    async def cluster(self) -> dict[str, Any]:
        return dict(await self.get("/api/v1/cluster"))

    async def mesh_stats(self) -> dict[str, Any]:
        return dict((await self.get("/api/v1/admin/stats"))["services"]["mesh"])

    async def owners(self) -> dict[str, int]:
        """Live devices per home node, as this node's replicated registry says."""
        return {m["node_id"]: m["devices"] for m in (await self.cluster())["members"] if m["devices"]}

    def write_mesh(self, peers: list[str], **mesh: Any) -> None:
        """Replace the node's config file at once (the watcher must never see half a file)."""
        partial = self.config.with_suffix(".new")
        partial.write_text(mesh_toml(peers, **mesh))
        partial.replace(self.config)

    async def register(self, network: str, name: str = "dev") -> tuple[str, str]:
        """Register a device here (this node is its home); returns (device id, device token)."""
        device = str(uuid.uuid4())
        await self.post("/api/v1/devices", {"device_id": device, "network_id": network, "name": name,
                                            "world_type": "physical"})  # fmt: skip
        return device, await self.token_for(device, network)

    async def token_for(self, device: str, network: str) -> str:
        body = {"name": "dev", "role": "device", "device_id": device, "networks": [network]}
        return str((await self.post("/api/v1/tokens", body))["token"])

    async def devices(self) -> list[tuple[str, str, str]]:
        items = (await self.get("/api/v1/devices?limit=500"))["items"]
        return sorted((d["device_id"], d["name"], d["network_id"]) for d in items)


def mesh_toml(peers: list[str], *, secret: str = SECRET, allowed: list[str] | None = None) -> str:
    """The [mesh] section of a test node: fast timers, so links and sync settle in a moment."""
    return "\n".join(
        [
            "[mesh]",
            "enabled = true",
            f"cluster_secret = {json.dumps(secret)}",
            f"peers = {json.dumps(peers)}",
            f"allowed_nodes = {json.dumps(allowed or [])}",
            "[mesh.link]",
            "ping_interval_s = 0.2",
            "dead_after_s = 3.0",
            "backoff_initial_s = 0.05",
            "backoff_max_s = 0.5",
            "[mesh.sync]",
            "poll_interval_s = 0.05",
            "anti_entropy_interval_s = 2.0",
            "",
        ]
    )


StartNode = Callable[..., Awaitable[MeshNode]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    """`await start_node("a", peers=[...], secret=...)`: a mesh node process, stopped after the test."""
    nodes: list[MeshNode] = []
    admin_tokens: dict[str, str] = {}
    async with trio.open_nursery() as nursery:

        async def start(name: str, peers: list[str] | None = None, **mesh: Any) -> MeshNode:
            """A node on `<name>-data`; started again under the same name it keeps its store (and
            the admin token it announced the first time)."""
            config = tmp_path / f"{name}.toml"
            config.write_text(mesh_toml(peers or [], **mesh))
            env = node_env(tmp_path / f"{name}-data", **{"server.config_poll_interval_s": 0.1})
            process = await start_node_process(nursery, env, tmp_path, name=name, config=config)
            token = process.announcement.get("admin_token") or admin_tokens[name]
            admin_tokens[name] = token
            http = httpx.AsyncClient(
                base_url=process.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            node = MeshNode(name, process, config, http)
            nodes.append(node)
            return node

        try:
            yield start
        finally:
            with trio.CancelScope(shield=True):
                await _stop(nodes)
            nursery.cancel_scope.cancel()


async def _stop(nodes: list[MeshNode]) -> None:
    for node in nodes:
        await node.http.aclose()
        if node.process.process.returncode is None:
            node.process.signal(signal.SIGTERM)
    for node in nodes:
        try:
            await node.process.wait(STOP_S)
        except trio.TooSlowError:
            node.process.kill_group()
            await node.process.wait(STOP_S)
        finally:
            node.process.kill_group()  # anything the node started


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll `check` (a condition on the nodes' state) until it holds; fail with `what` after the deadline."""
    with trio.move_on_after(timeout_s):
        while not await check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for: {what}")


async def linked(nodes: list[MeshNode], count: int) -> bool:
    """Every node has `count` healthy links with a measured round-trip time."""
    for node in nodes:
        links = (await node.cluster())["links"]
        if len(links) != count or not all(x["healthy"] and x["rtt_ms"] is not None for x in links):
            return False
    return True
