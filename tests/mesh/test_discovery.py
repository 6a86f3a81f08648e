"""mDNS discovery: TXT parsing rules, and real announcers in a network namespace the test creates.

The namespace rules are in tests/mesh/_netns.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from zeroconf import ServiceStateChange

from node.clock import WallClock
from node.mesh.discovery import MAX_PEERS, Discovery, read_announcement, txt_properties
from node.mesh.settings import DiscoverySettings
from tests.mesh._netns import netns  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]


def _props(**values: str) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in values.items()}


def test_txt_record_carries_identity_and_ports() -> None:
    ports = {"mesh": 7703, "rpc": 7702, "relay": 7701, "api": 7700, "x": 1}
    props = txt_properties("n1", "1.2.3", "home", ports)
    assert props == {
        "node_id": "n1",
        "version": "1.2.3",
        "cluster_id": "home",
        "mesh": "7703",
        "rpc": "7702",
        "relay": "7701",
        "api": "7700",
    }


def test_announcement_of_a_peer_becomes_a_hint_address() -> None:
    props = _props(node_id="n2", version="9", cluster_id="home", mesh="7703", rpc="7702", api="80")
    found = read_announcement(props, ["127.0.0.5"], own_id="n1", cluster_id="home")
    assert not isinstance(found, str)
    assert (found.node_id, found.address, found.version) == ("n2", "127.0.0.5:7703", "9")
    assert found.ports == {"mesh": 7703, "rpc": 7702, "api": 80}
    v6 = read_announcement(props, ["fe80::1"], own_id="n1", cluster_id="home")
    assert not isinstance(v6, str)
    assert v6.address == "[fe80::1]:7703"


@pytest.mark.parametrize(
    ("props", "addresses", "reason"),
    [
        (_props(node_id="n1", cluster_id="home", mesh="1"), ["127.0.0.1"], "self"),
        (_props(node_id="n2", cluster_id="away", mesh="1"), ["127.0.0.1"], "other-cluster"),
        (_props(node_id="n2", mesh="1"), ["127.0.0.1"], "other-cluster"),
        (_props(cluster_id="home", mesh="1"), ["127.0.0.1"], "malformed"),
        (_props(node_id="n2", cluster_id="home", mesh="0"), ["127.0.0.1"], "malformed"),
        (_props(node_id="n2", cluster_id="home", mesh="65536"), ["127.0.0.1"], "malformed"),
        (_props(node_id="n2", cluster_id="home", mesh="x1"), ["127.0.0.1"], "malformed"),
        (_props(node_id="n2", cluster_id="home", mesh="7"), ["224.0.0.251", "0.0.0.0"], "malformed"),
        (_props(node_id="n2", cluster_id="home", rpc="7702"), ["127.0.0.1"], "malformed"),  # no mesh port
        (_props(node_id="n2", cluster_id="home" * 40, mesh="7"), ["127.0.0.1"], "other-cluster"),
    ],
)
def test_announcements_that_are_not_hints(
    props: dict[bytes, bytes | None], addresses: list[str], reason: str
) -> None:
    assert read_announcement(props, addresses, own_id="n1", cluster_id="home") == reason


# ---------------------------------------------------------------- real announcers in a namespace


class Announcer:
    """One `tests.mesh._mdns_peer` process in the namespace and the JSON lines it printed."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._buffer = b""

    async def wait_for(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first line (already read or coming) that matches."""
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if match(line):
                    return line
            seen = len(self.lines)
            await self._read_more()

    async def _read_more(self) -> None:
        assert self.process.stdout is not None
        chunk = await self.process.stdout.receive_some(65536)
        if not chunk:
            raise AssertionError(f"announcer exited; it printed {self.lines}")
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines.extend(json.loads(raw) for raw in complete if raw.strip())

    async def stop(self) -> dict[str, Any]:
        """Close stdin (a clean stop) and return its final statistics."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        return await self.wait_for(lambda line: line["event"] == "closed")


@pytest.fixture
async def announcers(netns: str) -> AsyncIterator[Callable[..., Any]]:  # noqa: F811
    started: list[trio.Process] = []

    async def start(node_id: str, cluster_id: str, mesh_port: int) -> Announcer:
        command = ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.mesh._mdns_peer"]
        process = await trio.lowlevel.open_process(
            [*command, node_id, cluster_id, str(mesh_port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        started.append(process)
        return Announcer(process)

    try:
        yield start
    finally:
        for process in started:
            if process.returncode is None:
                os.killpg(process.pid, 9)
            with trio.move_on_after(10):
                await process.wait()


def _is(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line["event"] == kind and all(line.get(k) == v for k, v in fields.items())


@pytest.mark.netns
@pytest.mark.slow
async def test_announcers_in_a_namespace_see_each_other(announcers: Callable[..., Any]) -> None:
    a = await announcers("node-a", "home", 7000)
    b = await announcers("node-b", "home", 7100)
    c = await announcers("node-c", "elsewhere", 7200)
    with trio.fail_after(20):
        hint_at_a = await a.wait_for(_is("hint"))
        hint_at_b = await b.wait_for(_is("hint"))
        # node-c's announcement is resolved and ignored (another cluster), also by node-c itself
        await a.wait_for(lambda line: line["event"] == "peers" and line["ignored"] >= 1)
        await c.wait_for(lambda line: line["event"] == "peers" and line["ignored"] >= 2)
    assert (hint_at_a["address"], hint_at_a["node_id"]) == ("127.0.0.1:7100", "node-b")
    assert (hint_at_b["address"], hint_at_b["node_id"]) == ("127.0.0.1:7000", "node-a")

    with trio.fail_after(15):
        closed_b = await b.stop()
        # node-b said goodbye when it stopped: node-a forgets it without waiting for a TTL
        await a.wait_for(_is("peers", peers=[]))
        closed_a, closed_c = await a.stop(), await c.stop()
    assert closed_b["announced"] is False
    # hints went only to the other member of the cluster: never to itself, never across clusters
    assert [line["node_id"] for line in a.lines if line["event"] == "hint"] == ["node-b"]
    assert closed_a["hints"] == 1 and closed_c["hints"] == 0
    assert closed_c["peer_count"] == 0


# ---------------------------------------------------------------- the Trio side, with a stand-in zeroconf


class FakeInfo:
    def __init__(self, node_id: str, address: str, mesh: int) -> None:
        self.properties = _props(node_id=node_id, cluster_id="home", mesh=str(mesh), version="1")
        self._address = address

    def parsed_addresses(self) -> list[str]:
        return [self._address]


class FakeZeroconf:
    """Answers get_service_info from a table (a value that is an exception is raised)."""

    def __init__(self) -> None:
        self.infos: dict[str, FakeInfo | Exception | None] = {}

    def get_service_info(self, type_: str, name: str, timeout: int) -> FakeInfo | None:
        value = self.infos[name]
        if isinstance(value, Exception):
            raise value
        return value


def discovery_with_hints() -> tuple[Discovery, list[tuple[str, str | None]]]:
    hints: list[tuple[str, str | None]] = []
    discovery = Discovery(
        DiscoverySettings(mdns=True),
        node_id="me",
        cluster_id="home",
        version="1",
        ports={"mesh": 1},
        on_hint=lambda address, node_id: hints.append((address, node_id)),
        clock=WallClock(),
    )
    return discovery, hints


async def test_hints_follow_announcements_and_goodbyes() -> None:
    discovery, hints = discovery_with_hints()
    zc = FakeZeroconf()
    zc.infos["b._asgard._tcp.local."] = FakeInfo("b", "127.0.0.2", 7702)
    await discovery._handle(zc, "b._asgard._tcp.local.", ServiceStateChange.Added)
    await discovery._handle(zc, "b._asgard._tcp.local.", ServiceStateChange.Updated)
    assert hints == [("127.0.0.2:7702", "b")]  # the same address again is no new hint
    zc.infos["b._asgard._tcp.local."] = FakeInfo("b", "127.0.0.3", 7702)
    await discovery._handle(zc, "b._asgard._tcp.local.", ServiceStateChange.Updated)
    assert hints[-1] == ("127.0.0.3:7702", "b")
    await discovery._handle(zc, "b._asgard._tcp.local.", ServiceStateChange.Removed)
    assert discovery.statistics()["peer_count"] == 0


async def test_unresolvable_and_broken_records_are_counted_not_fatal() -> None:
    discovery, hints = discovery_with_hints()
    zc = FakeZeroconf()
    zc.infos["gone._asgard._tcp.local."] = None
    zc.infos["evil._asgard._tcp.local."] = ValueError("bad record")
    for name in zc.infos:
        await discovery._handle(zc, name, ServiceStateChange.Added)
    assert discovery.statistics()["resolve_failures"] == 2 and hints == []


async def test_the_table_of_discovered_nodes_is_bounded() -> None:
    discovery, hints = discovery_with_hints()
    zc = FakeZeroconf()
    for i in range(MAX_PEERS + 10):
        zc.infos[f"n{i}._asgard._tcp.local."] = FakeInfo(f"n{i}", "127.0.0.2", 1000 + i)
    for name in zc.infos:
        await discovery._handle(zc, name, ServiceStateChange.Added)
    stats = discovery.statistics()
    assert (stats["peer_count"], stats["hints"], stats["ignored"]) == (MAX_PEERS, MAX_PEERS, 10)
    assert len(hints) == MAX_PEERS
