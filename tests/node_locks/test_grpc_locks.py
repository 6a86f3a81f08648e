"""Locks over gRPC (asgard.v1.LockService with the official grpcio client) and as lock frames on a
Connect stream, and across surfaces (a WebSocket holder, a gRPC waiter)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import trio

from node.auth import Role
from tests.node_rpc.conftest import ConnectSession, bearer, rpc_target
from tests.relay.conftest import StartRelay
from tests.relay.helpers import Device, RelayEnv
from tests.rpc.conftest import Client
from wire.device import (
    FrameType,
    LockAcquire,
    LockExpired,
    LockGranted,
    LockRelease,
    LockReleased,
    Register,
    decode_lock_untrusted,
    encode_control,
)

TIMEOUT_S = 10.0


class Events:
    """A grpcio server stream read from Trio, one message at a time, with a deadline."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def next(self) -> Any:
        with trio.fail_after(TIMEOUT_S):
            return await trio.to_thread.run_sync(_next, self.call, abandon_on_cancel=True)

    async def settled(self) -> Any:
        """The next event that is not QUEUED (GRANTED, REFUSED, or the lease's end)."""
        while True:
            event = await self.next()
            if event is None or event.state != 1:  # ACQUIRE_STATE_QUEUED
                return event

    def cancel(self) -> None:
        self.call.cancel()


def _next(call: Any) -> Any:
    return next(call, None)


def acquire(client: Client, token: str, resource: str, **fields: Any) -> Events:
    request = client.stubs.locks.AcquireRequest(resource=resource, **fields)
    return Events(client.locks.Acquire(request, metadata=bearer(token), timeout=30))


def state(client: Client, event: Any) -> str:
    return str(client.stubs.locks.AcquireState.Name(event.state))


async def test_acquire_queued_granted_refresh_release(env: RelayEnv, grpc_client: Client) -> None:
    pb = grpc_client.stubs.locks
    a, b = await env.device(), await env.device()
    held = acquire(grpc_client, a.token, "printer", lease_ms=30_000)
    granted = await held.next()
    assert state(grpc_client, granted) == "ACQUIRE_STATE_GRANTED"
    waiting = acquire(grpc_client, b.token, "printer", wait_timeout_ms=5_000)
    try:
        lease = granted.lease
        assert (lease.resource, lease.holder) == ("printer", str(a.device_id))
        queued = await waiting.next()
        assert (state(grpc_client, queued), queued.queue_position) == ("ACQUIRE_STATE_QUEUED", 0)
        refresh = pb.RefreshRequest(resource="printer", fencing_token=lease.fencing_token, lease_ms=60_000)
        refreshed = await grpc_client.call(grpc_client.locks.Refresh, refresh, metadata=bearer(a.token))
        assert refreshed.expires.ToNanoseconds() > lease.expires.ToNanoseconds()
        foreign = pb.ReleaseRequest(resource="printer", fencing_token=lease.fencing_token)
        denied = await grpc_client.error(grpc_client.locks.Release, foreign, metadata=bearer(b.token))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        answer = await grpc_client.call(grpc_client.locks.Release, foreign, metadata=bearer(a.token))
        assert answer.released
        ended = await held.next()
        assert (state(grpc_client, ended), ended.detail) == ("ACQUIRE_STATE_RELEASED", "released")
        assert await held.next() is None  # the stream ends after the lease's end
        next_grant = await waiting.next()
        assert state(grpc_client, next_grant) == "ACQUIRE_STATE_GRANTED"
        assert next_grant.lease.fencing_token > lease.fencing_token
        again = await grpc_client.call(grpc_client.locks.Release, foreign, metadata=bearer(a.token))
        assert not again.released
        stale = await grpc_client.error(grpc_client.locks.Refresh, refresh, metadata=bearer(a.token))
        assert stale.code() == grpc.StatusCode.NOT_FOUND
    finally:
        held.cancel()
        waiting.cancel()


async def test_refusals_timeout_busy_and_deadlock(env: RelayEnv, grpc_client: Client) -> None:
    pb = grpc_client.stubs.locks
    a, b = await env.device(), await env.device()
    streams = []
    try:
        for token, resource in ((a.token, "r1"), (b.token, "r2")):
            streams.append(acquire(grpc_client, token, resource))
            assert state(grpc_client, await streams[-1].next()) == "ACQUIRE_STATE_GRANTED"
        timeout = await acquire(grpc_client, b.token, "r1", wait_timeout_ms=200).settled()
        assert (state(grpc_client, timeout), timeout.reason) == (
            "ACQUIRE_STATE_REFUSED",
            pb.REFUSAL_REASON_TIMEOUT,
        )
        busy = await acquire(grpc_client, b.token, "r1", wait_timeout_ms=0).next()
        assert (state(grpc_client, busy), busy.reason) == ("ACQUIRE_STATE_REFUSED", pb.REFUSAL_REASON_BUSY)
        a_waits = acquire(grpc_client, a.token, "r2", wait_timeout_ms=5_000)
        streams.append(a_waits)
        assert state(grpc_client, await a_waits.next()) == "ACQUIRE_STATE_QUEUED"
        victim = await acquire(grpc_client, b.token, "r1", wait_timeout_ms=5_000).settled()
        assert (state(grpc_client, victim), victim.reason) == (
            "ACQUIRE_STATE_REFUSED",
            pb.REFUSAL_REASON_DEADLOCK,
        )
    finally:
        for s in streams:
            s.cancel()


async def test_the_stream_tells_expiry_and_preemption(start_relay: StartRelay, stubs: Any) -> None:
    env = await start_relay(**{"locks.deadlock_policy": "preempt-holder"})
    with grpc.insecure_channel(rpc_target(env)) as channel:
        client = Client(channel, stubs)
        a, b = await env.device(), await env.device()
        short = acquire(client, a.token, "lamp", lease_ms=200)
        assert state(client, await short.next()) == "ACQUIRE_STATE_GRANTED"
        assert state(client, await short.next()) == "ACQUIRE_STATE_EXPIRED"
        old = acquire(client, a.token, "r1")
        streams = [old]
        try:
            assert state(client, await old.next()) == "ACQUIRE_STATE_GRANTED"
            young = acquire(client, b.token, "r2")
            streams.append(young)
            assert state(client, await young.next()) == "ACQUIRE_STATE_GRANTED"
            a_waits = acquire(client, a.token, "r2", wait_timeout_ms=5_000)
            streams.append(a_waits)
            assert state(client, await a_waits.next()) == "ACQUIRE_STATE_QUEUED"
            streams.append(acquire(client, b.token, "r1", wait_timeout_ms=300))
            preempted = await young.next()  # b's wait for r1 closed the cycle: its younger lease goes
            assert state(client, preempted) == "ACQUIRE_STATE_PREEMPTED"
            granted = await a_waits.next()
            assert state(client, granted) == "ACQUIRE_STATE_GRANTED"
            assert granted.lease.fencing_token > preempted.lease.fencing_token
        finally:
            for s in streams:
                s.cancel()


async def test_a_viewer_token_may_not_lock(env: RelayEnv, grpc_client: Client) -> None:
    secret, _ = await env.handle.tokens.create(name="viewer", role=Role.VIEWER)
    events = acquire(grpc_client, secret, "printer")
    with pytest.raises(grpc.RpcError) as denied:
        await events.next()
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_list_and_watch(env: RelayEnv, grpc_client: Client) -> None:
    pb = grpc_client.stubs.locks
    admin, _ = await env.handle.tokens.create(name="admin", role=Role.ADMIN)
    a = await env.device()
    watch = Events(
        grpc_client.locks.Watch(
            pb.WatchLocksRequest(resource_prefix="room/"), metadata=bearer(admin), timeout=30
        )
    )
    locks = env.handle.extra["locks"]
    with trio.fail_after(TIMEOUT_S):
        while locks.statistics()["watchers"] == 0:  # the watch is in place on the node
            await trio.sleep(0.01)
    held = acquire(grpc_client, a.token, "room/light")
    try:
        granted = await held.next()
        listed = await grpc_client.call(
            grpc_client.locks.List, pb.ListLocksRequest(resource_prefix="room/"), metadata=bearer(admin)
        )
        assert [(lock.resource, [h.fencing_token for h in lock.holders]) for lock in listed.locks] == [
            ("room/light", [granted.lease.fencing_token])
        ]
        event = await watch.next()
        assert (event.kind, event.resource) == (pb.LOCK_EVENT_KIND_GRANTED, "room/light")
        release = pb.ReleaseRequest(resource="room/light", fencing_token=granted.lease.fencing_token)
        await grpc_client.call(grpc_client.locks.Release, release, metadata=bearer(a.token))
        event = await watch.next()
        assert (event.kind, event.lease.fencing_token) == (
            pb.LOCK_EVENT_KIND_RELEASED,
            granted.lease.fencing_token,
        )
    finally:
        held.cancel()
        watch.cancel()


async def test_a_websocket_holder_and_a_grpc_waiter(env: RelayEnv, grpc_client: Client) -> None:
    ws_dev, grpc_dev = await env.device(), await env.device()
    ws = await env.client(ws_dev)
    with trio.fail_after(TIMEOUT_S):
        lease = await ws.locks.acquire("kettle")
    waiting = acquire(grpc_client, grpc_dev.token, "kettle", wait_timeout_ms=5_000)
    try:
        assert state(grpc_client, await waiting.next()) == "ACQUIRE_STATE_QUEUED"
        with trio.fail_after(TIMEOUT_S):
            await ws.locks.release("kettle", lease.token)
        granted = await waiting.next()
        assert state(grpc_client, granted) == "ACQUIRE_STATE_GRANTED"
        assert granted.lease.fencing_token > lease.token
    finally:
        waiting.cancel()


async def connect_registered(client: Client, dev: Device) -> ConnectSession:
    session = ConnectSession(client, dev.token)
    assert (await session.receive()).type == FrameType.WELCOME
    session.send(
        encode_control(
            Register(dev.device_id, dev.network_id, "g", "virtual"), message_id=1, source=dev.device_id
        )
    )
    await session.receive_type(FrameType.REGISTERED)
    return session


async def test_lock_frames_on_a_connect_stream(start_relay: StartRelay, stubs: Any) -> None:
    grace = 0.5
    env = await start_relay(**{"locks.session_grace_s": grace})
    with grpc.insecure_channel(rpc_target(env)) as channel:
        client = Client(channel, stubs)
        dev, other = await env.device(), await env.device()
        session = await connect_registered(client, dev)
        session.send(encode_control(LockAcquire("lamp", lease_s=0.2), message_id=5, source=dev.device_id))
        frame = await session.receive_type(LockGranted.TYPE)
        granted = decode_lock_untrusted(frame)
        assert isinstance(granted, LockGranted) and frame.message_id == 5
        expired = await session.receive_type(LockExpired.TYPE)  # the notice, with the ACQUIRE's id
        assert (decode_lock_untrusted(expired), expired.message_id) == (LockExpired("lamp", granted.token), 5)
        session.send(encode_control(LockAcquire("door", lease_s=60), message_id=6, source=dev.device_id))
        door = decode_lock_untrusted(await session.receive_type(LockGranted.TYPE))
        assert isinstance(door, LockGranted)
        assert await session.end() is None  # the session ends: its locks go after the grace
        ended_at = trio.current_time()
        ws = await env.client(other)
        with trio.fail_after(TIMEOUT_S):
            next_door = await ws.locks.acquire("door", wait_s=5)
        assert trio.current_time() - ended_at >= grace * 0.9
        assert next_door.token > door.token
        holders = await env.handle.extra["locks"].get("door")
        assert [h.owner for h in holders.holders] == [str(other.device_id)]


async def test_a_connect_session_release_is_answered(env: RelayEnv, grpc_client: Client) -> None:
    dev = await env.device()
    session = await connect_registered(grpc_client, dev)
    try:
        session.send(encode_control(LockAcquire("fan"), message_id=3, source=dev.device_id))
        granted = decode_lock_untrusted(await session.receive_type(LockGranted.TYPE))
        assert isinstance(granted, LockGranted)
        session.send(encode_control(LockRelease("fan", granted.token), message_id=4, source=dev.device_id))
        frame = await session.receive_type(LockReleased.TYPE)
        assert (frame.message_id, decode_lock_untrusted(frame)) == (
            4,
            LockReleased("fan", granted.token, "released"),
        )
    finally:
        assert await session.end() is None
