"""Leader election across three `asgard serve` processes on a real etcd (loopback).

Each node's view comes from its API (`/api/v1/admin/stats`, `services.election`); the leader-only
housekeeping record is read from etcd itself. Waiting is always for an observed condition with a
deadline; the only fixed waits are the lease TTLs the assertions are about.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node.clock import WallClock
from node.locks.etcd import open_etcd_client
from node.mesh.election import LeaderElection
from node.mesh.settings import ElectionSettings
from tests.e2e.nodeproc import NodeProcess, node_env, start_node_process
from tests.locks.conftest import EtcdProcess

pytestmark = [pytest.mark.external, pytest.mark.slow]

TTL_S = 2
CLUSTER = "election-test"
POLL_S = 0.05


@pytest.fixture
def etcd(require_program: Callable[[str], str], tmp_path: Path) -> Any:
    proc = EtcdProcess(require_program("etcd"), tmp_path)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


Spawn = Callable[[str], Awaitable[NodeProcess]]


@pytest.fixture
async def spawn(tmp_path: Path, nursery: trio.Nursery, etcd: EtcdProcess) -> AsyncIterator[Spawn]:
    """Start a node on its own store that campaigns on the test's etcd."""
    started: list[NodeProcess] = []

    async def start(name: str) -> NodeProcess:
        env = node_env(
            tmp_path / name,
            **{
                "mesh.cluster_id": CLUSTER,
                "mesh.election.etcd_endpoints": [etcd.endpoint],
                "mesh.election.lease_ttl_s": TTL_S,
                "mesh.election.retry_s": 0.2,
                "mesh.election.housekeeping_interval_s": 0.2,
            },
        )
        node = await start_node_process(nursery, env, tmp_path, name=name)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.kill_group()
            with trio.move_on_after(10):
                await node.process.wait()


async def election_of(client: httpx.AsyncClient, node: NodeProcess) -> dict[str, Any]:
    token = node.announcement["admin_token"]
    answer = await client.get(f"{node.url}/api/v1/admin/stats", headers={"Authorization": f"Bearer {token}"})
    answer.raise_for_status()
    status: dict[str, Any] = answer.json()["services"]["election"]
    return status


async def views(client: httpx.AsyncClient, nodes: list[NodeProcess]) -> list[dict[str, Any]]:
    return [await election_of(client, node) for node in nodes]


async def until(
    client: httpx.AsyncClient,
    nodes: list[NodeProcess],
    done: Callable[[list[dict[str, Any]]], bool],
) -> list[dict[str, Any]]:
    """Poll the nodes' views until `done` holds (the caller sets the deadline)."""
    while True:
        seen = await views(client, nodes)
        if done(seen):
            return seen
        await trio.sleep(POLL_S)


def one_leader(seen: list[dict[str, Any]]) -> bool:
    leaders = [s for s in seen if s["is_leader"]]
    return len(leaders) == 1 and all(s["leader"] == leaders[0]["node_id"] for s in seen)


async def housekeeping_record(etcd: EtcdProcess) -> dict[str, Any] | None:
    key = f"/asgard/mesh/{CLUSTER}/housekeeping".encode()
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.post(
            f"{etcd.endpoint}/v3/kv/range", json={"key": base64.b64encode(key).decode()}
        )
    kvs = answer.json().get("kvs", [])
    return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None


def check_disjoint(tenures: list[tuple[str, dict[str, Any]]]) -> None:
    """No two nodes claimed the same term, and in term order each tenure ends before the next
    starts (one node may have several tenures of one term if its claim had a gap)."""
    owners = {t["term"]: node_id for node_id, t in tenures}
    assert all(owners[t["term"]] == node_id for node_id, t in tenures), tenures
    ordered = sorted(tenures, key=lambda item: (item[1]["term"], item[1]["started_at"]))
    for (_, earlier), (_, later) in itertools.pairwise(ordered):
        assert earlier["ended_at"] is not None, ordered
        assert earlier["ended_at"] <= later["started_at"], ordered


async def test_failover_history_and_etcd_loss(spawn: Spawn, etcd: EtcdProcess) -> None:
    nodes = [await spawn(name) for name in ("a", "b", "c")]
    async with httpx.AsyncClient(timeout=5) as client:
        with trio.fail_after(15):
            seen = await until(client, nodes, one_leader)
        first = next(s for s in seen if s["is_leader"])
        assert {s["mode"] for s in seen} == {"etcd"}
        assert first["term"] == first["campaign_term"] > 0
        with trio.fail_after(10):  # the leader-only duty ran, fenced by the term, and only there
            while (record := await housekeeping_record(etcd)) is None or len(record["members"]) < 3:
                await trio.sleep(POLL_S)  # (a summary written before every node campaigned has fewer)
        assert (record["leader"], record["term"]) == (first["node_id"], first["term"])
        assert sorted(record["members"]) == sorted(s["node_id"] for s in seen)
        others = [s for s in await views(client, nodes) if not s["is_leader"]]
        assert all(s["housekeeping_runs"] == 0 for s in others)

        # kill -9 the leader: the next oldest campaigner leads within the lease TTL + 2 s
        victim = next(n for n, s in zip(nodes, seen, strict=True) if s["is_leader"])
        survivors = [n for n in nodes if n is not victim]
        last_seen_of_victim = await election_of(client, victim)
        victim.kill_group()
        killed_at, killed_wall = trio.current_time(), time.time()
        with trio.fail_after(TTL_S + 2):
            after = await until(client, survivors, lambda v: one_leader(v) and v[0]["term"] > first["term"])
        took_s = trio.current_time() - killed_at
        print(f"failover after kill -9: {took_s:.2f} s (lease TTL {TTL_S} s)")
        second = next(s for s in after if s["is_leader"])
        assert second["node_id"] != first["node_id"] and took_s <= TTL_S + 2
        with trio.fail_after(10):
            while (record := await housekeeping_record(etcd)) is None or record["term"] != second["term"]:
                await trio.sleep(POLL_S)
        assert record["leader"] == second["node_id"]

        # etcd stops: once every lease could have lapsed, nobody claims to lead
        etcd.stop()
        stopped_wall = time.time()
        await trio.sleep(TTL_S + 0.2)  # the property is about this instant, not a synchronisation
        final = await views(client, survivors)
        assert not any(s["is_leader"] for s in final), final
        assert all(s["leader"] is None and s["term"] is None for s in final), final
        assert all(s["detail"].startswith("no leader known") for s in final)

        # etcd back (same data): the nodes campaign again and one leads with a later term
        etcd.start()
        with trio.fail_after(4 * TTL_S + 10):
            back = await until(client, survivors, lambda v: one_leader(v) and v[0]["term"] > second["term"])

    # the recorded history: every tenure of every node (the victim's open one ended at the kill)
    # shows no two leaders with overlapping terms
    tenures = [(s["node_id"], t) for s in back for t in s["tenures"]]
    for tenure in last_seen_of_victim["tenures"]:
        ended = tenure["ended_at"] if tenure["ended_at"] is not None else killed_wall
        tenures.append((last_seen_of_victim["node_id"], {**tenure, "ended_at": ended}))
    assert {t["term"] for node_id, t in tenures if node_id == first["node_id"]} == {first["term"]}
    check_disjoint(tenures)
    leader_tenure = next(t for _, t in tenures if t["term"] == second["term"])
    assert {t["term"] for _, t in tenures} >= {first["term"], second["term"]}
    assert leader_tenure["ended_at"] <= stopped_wall + TTL_S  # it stopped claiming in time
    third = next(s for s in back if s["is_leader"])
    for view in back:  # every node saw the terms in order, ending with the newest
        changes = [c["term"] for c in view["history"] if c["term"] is not None]
        assert changes == sorted(changes) and changes[-1] == third["term"], view["history"]


async def test_a_deposed_leader_is_fenced_out_by_etcd(etcd: EtcdProcess) -> None:
    """The housekeeping write carries the term: once the leader's key is gone (its lease lapsed
    while it was paused, say), etcd refuses the write even though the node still tries."""
    settings = ElectionSettings(
        etcd_endpoints=(etcd.endpoint,), lease_ttl_s=TTL_S, housekeeping_interval_s=3600
    )
    election = LeaderElection(settings, node_id="solo", cluster_id=CLUSTER, clock=WallClock())
    async with trio.open_nursery() as nursery, open_etcd_client([etcd.endpoint]) as client:
        await nursery.start(election.run)
        with trio.fail_after(10):
            while (term := election.term()) is None:
                await trio.sleep(POLL_S)
        entry = election._entry
        assert entry is not None and entry.revision == term
        assert await election._write_summary(client, entry, term) == (["solo"], True)
        await client.delete(entry.key)  # what etcd does when the lease lapses
        _, written = await election._write_summary(client, entry, term)
        assert written is False
        record = await housekeeping_record(etcd)
        assert record is not None and record["term"] == term
        nursery.cancel_scope.cancel()
