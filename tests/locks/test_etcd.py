"""Cluster locks against a real etcd on loopback (started by the `etcd` fixture)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from node.errors import Aborted, NotFound, Unavailable
from node.locks import LockMode, LockSettings
from node.locks.etcd import Election, open_etcd_client, open_etcd_session
from node.locks.journal import MemoryLockJournal
from node.locks.service import LockService, open_lock_service

from .conftest import EtcdProcess

pytestmark = [pytest.mark.external]
REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def node(etcd: EtcdProcess, ttl_s: int = 2) -> AsyncIterator[LockService]:
    settings = LockSettings(
        etcd_endpoints=(etcd.endpoint,), etcd_lease_ttl_s=ttl_s, etcd_request_timeout_s=1.0
    )
    async with open_lock_service(settings, MemoryLockJournal()) as svc:
        yield svc


async def test_gateway_primitives(etcd: EtcdProcess) -> None:
    with trio.fail_after(10):
        async with open_etcd_client([etcd.endpoint]) as client:
            lease_id, ttl = await client.lease_grant(5)
            assert ttl == 5
            created, rev, kvs = await client.put_if_absent(b"/t/a", b"1", lease_id, b"/t/")
            assert created
            assert [kv.key for kv in kvs] == [b"/t/a"]
            assert kvs[0].create_revision == rev
            created, _, kvs = await client.put_if_absent(b"/t/a", b"2", lease_id, b"/t/")
            assert not created
            assert [kv.value for kv in kvs] == [b"1"]
            assert await client.lease_keepalive(lease_id) == 5
            await client.lease_revoke(lease_id)
            assert await client.lease_keepalive(lease_id) == 0
            _, kvs = await client.range_prefix(b"/t/")
            assert kvs == []


async def test_mutual_exclusion_across_two_nodes_and_tokens_increase(etcd: EtcdProcess) -> None:
    with trio.fail_after(20):
        async with node(etcd) as n1, node(etcd) as n2:
            inside: list[str] = []
            tokens: list[int] = []

            async def worker(locks: LockService, name: str) -> None:
                for _ in range(5):
                    lease = await locks.acquire("cluster/x", owner=name, session=name, wait_s=10)
                    assert inside == []
                    inside.append(name)
                    tokens.append(lease.token)
                    await trio.sleep(0.01)
                    inside.remove(name)
                    await locks.release("cluster/x", lease.token, owner=name)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker, n1, "a")
                nursery.start_soon(worker, n2, "b")
            assert len(tokens) == 10
            assert tokens == sorted(set(tokens))


async def test_shared_holders_coexist_and_exclusive_waits(etcd: EtcdProcess) -> None:
    with trio.fail_after(20):
        async with node(etcd) as n1, node(etcd) as n2:
            s1 = await n1.acquire("cluster/s", owner="a", session="a", mode=LockMode.SHARED)
            s2 = await n2.acquire("cluster/s", owner="b", session="b", mode=LockMode.SHARED)
            with pytest.raises(Aborted):
                await n2.acquire("cluster/s", owner="c", session="c", wait_s=0)
            view = await n1.get("cluster/s")
            assert {h.owner for h in view.holders} == {"a", "b"}
            async with trio.open_nursery() as nursery:
                got: list[int] = []

                queued = trio.Event()

                async def exclusive() -> None:
                    lease = await n2.acquire(
                        "cluster/s", owner="c", session="c", on_queued=lambda _q: queued.set()
                    )
                    got.append(lease.token)

                nursery.start_soon(exclusive)
                await queued.wait()
                assert got == []
                await n1.release("cluster/s", s1.token, owner="a")
                await n2.release("cluster/s", s2.token, owner="b")
            assert got[0] > s2.token > s1.token


async def test_wait_timeout_and_lease_expiry_of_a_cluster_lock(etcd: EtcdProcess) -> None:
    with trio.fail_after(20):
        async with node(etcd) as n1, node(etcd) as n2:
            lease = await n1.acquire("cluster/t", owner="a", session="a", lease_s=0.5)
            with pytest.raises(Aborted):
                await n2.acquire("cluster/t", owner="b", session="b", wait_s=0.1)
            second = await n2.acquire("cluster/t", owner="b", session="b", wait_s=5)
            assert second.token > lease.token
            with pytest.raises(NotFound):
                await n1.refresh("cluster/t", lease.token, owner="a")
            assert n2.statistics()["cluster_holds"] == 1


async def test_killed_holder_frees_the_lock_within_ttl_plus_one_second(etcd: EtcdProcess) -> None:
    ttl = 2
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.locks.holder_process", etcd.endpoint, "cluster/k", str(ttl)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        victim_token = int(line)
        async with node(etcd) as n2:
            with pytest.raises(Aborted):
                await n2.acquire("cluster/k", owner="b", session="b", wait_s=0)
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = trio.current_time()
            with trio.fail_after(ttl + 1):
                lease = await n2.acquire("cluster/k", owner="b", session="b", wait_s=ttl + 1)
            assert lease.token > victim_token
            assert trio.current_time() - killed_at <= ttl + 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_stopped_etcd_fails_acquires_cleanly(etcd: EtcdProcess) -> None:
    async with node(etcd) as n1:
        with trio.fail_after(10):
            held = await n1.acquire("cluster/u", owner="a", session="a", lease_s=60)
        etcd.stop()
        with trio.fail_after(5):
            with pytest.raises(Unavailable):
                await n1.acquire("cluster/v", owner="a", session="a")
            with pytest.raises(Unavailable):
                await n1.acquire("cluster/u", owner="b", session="b")
        # The node stops vouching for its lock once its etcd lease may have lapsed.
        with trio.fail_after(5):
            while n1.statistics()["cluster_holds"]:
                await trio.sleep(0.1)
        with pytest.raises(NotFound):
            await n1.refresh("cluster/u", held.token, owner="a")
        # Local resources are unaffected.
        assert (await n1.acquire("local", owner="a", session="a")).token == 1


async def test_unconfigured_node_keeps_cluster_names_local(etcd: EtcdProcess) -> None:
    async with open_lock_service(LockSettings(), MemoryLockJournal()) as locks:
        lease = await locks.acquire("cluster/x", owner="a", session="a")
        assert lease.token == 1
        assert locks.releases_at_once("cluster/x")


async def test_a_cluster_release_is_not_at_once(etcd: EtcdProcess) -> None:
    with trio.fail_after(10):
        async with node(etcd) as locks:
            assert not locks.releases_at_once("cluster/x")  # an etcd round trip
            assert locks.releases_at_once("local/x")


async def test_election_oldest_campaigner_leads(etcd: EtcdProcess) -> None:
    with trio.fail_after(20):
        async with open_etcd_client([etcd.endpoint]) as client:
            election = Election(client, b"/asgard/leader/")
            async with open_etcd_session(client, 2) as s1, open_etcd_session(client, 2) as s2:
                e1 = await election.campaign(s1, b"node-1")
                leaders: list[bytes | None] = []

                async def observe() -> None:
                    async with aclosing(election.observe()) as stream:
                        async for leader in stream:
                            leaders.append(leader.value if leader else None)
                            if leader is not None and leader.value == b"node-2":
                                return

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(observe)
                    won: list[int] = []

                    async def second() -> None:
                        won.append((await election.campaign(s2, b"node-2")).revision)

                    nursery.start_soon(second)
                    await trio.sleep(0.2)
                    assert won == []
                    await election.resign(e1)
                assert won[0] > e1.revision
                assert leaders[0] == b"node-1"
                assert leaders[-1] == b"node-2"
