"""Cluster locks with two `asgard serve` processes on one real etcd: mutual exclusion across the
nodes, increasing fencing tokens, a SIGKILLed holder's lock freed within its etcd lease TTL + 1 s,
and clean `unavailable` failures (gRPC UNAVAILABLE, relay NACK) once etcd is gone."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import trio

from node.client import NackError
from tests.e2e.nodeproc import NodeProcess, node_env, start_node_process
from tests.locks.conftest import EtcdProcess, etcd  # noqa: F401 - fixture
from tests.node_locks.test_grpc_locks import Events, state
from tests.node_rpc.conftest import bearer
from tests.relay.conftest import StartRelay
from tests.rpc.conftest import Client
from wire.device import NackReason

TTL_S = 2
TIMEOUT_S = 15.0
RESOURCE = "cluster/door"


@pytest.fixture
async def two_nodes(
    etcd: EtcdProcess,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[list[NodeProcess]]:
    settings = {"locks.etcd_endpoints": [etcd.endpoint], "locks.etcd_lease_ttl_s": TTL_S}
    nodes: list[NodeProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            for name in ("a", "b"):
                env = node_env(tmp_path / name, **settings)
                nodes.append(await start_node_process(nursery, env, tmp_path, name=name))
            yield nodes
        finally:
            for node in nodes:
                node.kill_group()
                with trio.move_on_after(10):
                    await node.process.wait()
            nursery.cancel_scope.cancel()


def acquire_on(client: Client, token: str, **fields: Any) -> Events:
    request = client.stubs.locks.AcquireRequest(resource=RESOURCE, **fields)
    return Events(client.locks.Acquire(request, metadata=bearer(token), timeout=60))


async def test_two_nodes_exclude_each_other_and_a_killed_holder_frees_the_lock(
    two_nodes: list[NodeProcess], stubs: SimpleNamespace
) -> None:
    a, b = two_nodes
    with (
        grpc.insecure_channel(a.announcement["rpc"]) as ca,
        grpc.insecure_channel(b.announcement["rpc"]) as cb,
    ):
        client_a, client_b = Client(ca, stubs), Client(cb, stubs)
        token_a, token_b = a.announcement["admin_token"], b.announcement["admin_token"]
        streams: list[Events] = []
        try:
            held = acquire_on(client_a, token_a, lease_ms=60_000)
            streams.append(held)
            first = await held.next()
            assert state(client_a, first) == "ACQUIRE_STATE_GRANTED"
            busy = await acquire_on(client_b, token_b, wait_timeout_ms=0).settled()
            assert state(client_b, busy) == "ACQUIRE_STATE_REFUSED"
            waiting = acquire_on(client_b, token_b, wait_timeout_ms=10_000, lease_ms=60_000)
            streams.append(waiting)
            release = stubs.locks.ReleaseRequest(resource=RESOURCE, fencing_token=first.lease.fencing_token)
            listed = await client_a.call(
                client_a.locks.List,
                stubs.locks.ListLocksRequest(resource_prefix="cluster/"),
                metadata=bearer(token_a),
            )
            assert [lock.cluster for lock in listed.locks] == [True]
            assert (await client_a.call(client_a.locks.Release, release, metadata=bearer(token_a))).released
            second = await waiting.settled()
            assert state(client_b, second) == "ACQUIRE_STATE_GRANTED"
            assert second.lease.fencing_token > first.lease.fencing_token
            after_kill = acquire_on(client_a, token_a, wait_timeout_ms=10_000)
            streams.append(after_kill)
            b.kill_group()  # SIGKILL the holder's node: its etcd lease lapses within the TTL
            killed_at = trio.current_time()
            third = await after_kill.settled()
            assert state(client_a, third) == "ACQUIRE_STATE_GRANTED"
            assert trio.current_time() - killed_at <= TTL_S + 1.0
            assert third.lease.fencing_token > second.lease.fencing_token
        finally:
            for s in streams:
                s.cancel()
    assert b.process.returncode == -signal.SIGKILL or await b.wait(10) == -signal.SIGKILL


async def test_acquires_fail_cleanly_when_etcd_is_gone(
    two_nodes: list[NodeProcess],
    etcd: EtcdProcess,  # noqa: F811
    stubs: SimpleNamespace,
) -> None:
    a = two_nodes[0]
    with grpc.insecure_channel(a.announcement["rpc"]) as channel:
        client = Client(channel, stubs)
        token = a.announcement["admin_token"]
        granted = await acquire_on(client, token).next()
        assert state(client, granted) == "ACQUIRE_STATE_GRANTED"
        etcd.stop()
        events = acquire_on(client, token, wait_timeout_ms=1_000)
        with pytest.raises(grpc.RpcError) as failed:
            await events.settled()
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        local = await acquire_on_resource(client, token, "kitchen/light")
        assert state(client, local) == "ACQUIRE_STATE_GRANTED"  # local resources are unaffected


async def acquire_on_resource(client: Client, token: str, resource: str) -> Any:
    request = client.stubs.locks.AcquireRequest(resource=resource)
    return await Events(client.locks.Acquire(request, metadata=bearer(token), timeout=60)).next()


async def test_a_relay_acquire_is_nacked_unavailable_without_etcd(
    start_relay: StartRelay,
    etcd: EtcdProcess,  # noqa: F811
) -> None:
    env = await start_relay(**{"locks.etcd_endpoints": [etcd.endpoint], "locks.etcd_lease_ttl_s": TTL_S})
    ws = await env.client(await env.device())
    with trio.fail_after(TIMEOUT_S):
        lease = await ws.locks.acquire(RESOURCE, wait_s=0)
        await ws.locks.release(RESOURCE, lease.token)
        etcd.stop()
        with pytest.raises(NackError) as nack:
            await ws.locks.acquire(RESOURCE, wait_s=1)
    assert nack.value.reason == NackReason.UNAVAILABLE
