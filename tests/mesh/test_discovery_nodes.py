"""mDNS discovery between real `asgard serve` processes in a network namespace the test creates.

Two nodes of one cluster, with no static peers, find each other over mDNS and link (the hint is
dialled and authenticated by the mesh); a node of another cluster in the same namespace is seen and
ignored. The nodes' APIs live inside the namespace, so the test reads them through a tiny stdlib
HTTP client started there (`ip netns exec`). Namespace rules: tests/mesh/_netns.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.nodeproc import asgard_command, node_env, read_line
from tests.mesh._netns import netns  # noqa: F401  (fixture)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SECRET = "discovery-test-secret-0123456789"
FETCH = (
    "import sys, urllib.request; "
    "r = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]}); "
    "sys.stdout.write(urllib.request.urlopen(r, timeout=5).read().decode())"
)


def mesh_toml(cluster_id: str) -> str:
    return "\n".join(
        [
            "[mesh]",
            "enabled = true",
            f"cluster_id = {json.dumps(cluster_id)}",
            f"cluster_secret = {json.dumps(SECRET)}",
            "[mesh.discovery]",
            "mdns = true",
            'interfaces = ["127.0.0.1"]',
            "[mesh.link]",
            "ping_interval_s = 0.2",
            "backoff_initial_s = 0.05",
            "backoff_max_s = 0.5",
            "",
        ]
    )


class NetnsNode:
    def __init__(self, namespace: str, process: trio.Process, announcement: dict[str, Any]) -> None:
        self.netns = namespace
        self.process = process
        self.announcement = announcement

    @property
    def node_id(self) -> str:
        return str(self.announcement["node_id"])

    async def get(self, path: str) -> Any:
        """GET an API path from inside the namespace."""
        url, token = self.announcement["api"] + path, self.announcement["admin_token"]
        with trio.fail_after(10):
            done = await trio.run_process(
                ["ip", "netns", "exec", self.netns, sys.executable, "-c", FETCH, url, token],
                capture_stdout=True,
                capture_stderr=True,
            )
        return json.loads(done.stdout)


@pytest.fixture
async def start_in_netns(
    netns: str,  # noqa: F811
    tmp_path: Path,
    nursery: trio.Nursery,
) -> AsyncIterator[Callable[[str, str], Awaitable[NetnsNode]]]:
    started: list[trio.Process] = []

    async def start(name: str, cluster_id: str) -> NetnsNode:
        config = tmp_path / f"{name}.toml"
        config.write_text(mesh_toml(cluster_id))
        env = node_env(tmp_path / f"{name}-data")
        stderr = (tmp_path / f"{name}.stderr").open("ab")
        process = await trio.lowlevel.open_process(
            ["ip", "netns", "exec", netns, *asgard_command(), "--config", str(config), "serve"],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
        stderr.close()
        started.append(process)
        assert process.stdout is not None
        with trio.fail_after(30):
            line = await read_line(process.stdout)
        assert line, (tmp_path / f"{name}.stderr").read_text()
        nursery.start_soon(_drain, process.stdout)
        return NetnsNode(netns, process, json.loads(line))

    try:
        yield start
    finally:
        for process in started:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
            with trio.move_on_after(10):
                await process.wait()


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    async with stream:
        while await stream.receive_some(4096):
            pass


async def linked_peers(node: NetnsNode) -> set[str]:
    links = (await node.get("/api/v1/cluster"))["links"]
    return {link["peer"] for link in links if link["healthy"]}


async def test_nodes_find_each_other_over_mdns_and_link(
    start_in_netns: Callable[[str, str], Awaitable[NetnsNode]],
) -> None:
    a = await start_in_netns("a", "home")
    b = await start_in_netns("b", "home")
    c = await start_in_netns("c", "elsewhere")
    with trio.fail_after(30):
        while not (b.node_id in await linked_peers(a) and a.node_id in await linked_peers(b)):
            await trio.sleep(0.2)
        while (await a.get("/api/v1/admin/stats"))["services"]["discovery"]["ignored"] < 1:
            await trio.sleep(0.2)  # node c's announcement has been resolved (and ignored) too
    discovery = (await a.get("/api/v1/admin/stats"))["services"]["discovery"]
    assert discovery["announced"] is True
    [peer] = discovery["peers"]  # node b only: never itself, never node c of another cluster
    assert (peer["node_id"], peer["address"]) == (b.node_id, b.announcement["mesh"])
    api_port = int(b.announcement["api"].rsplit(":", 1)[1])
    assert peer["ports"]["api"] == api_port
    assert c.node_id not in await linked_peers(a)
    assert await linked_peers(c) == set()
