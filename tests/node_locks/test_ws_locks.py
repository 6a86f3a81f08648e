"""Locks on the WebSocket relay, through the device client's `locks` calls (lock frames 0x20-0x2F)."""

from __future__ import annotations

import pytest
import trio

from node.client import DeviceClient, LockRefusedError, NackError
from tests.relay.conftest import StartRelay
from tests.relay.helpers import RelayEnv
from wire.device import LockExpired, LockPreempted, NackReason

TIMEOUT_S = 10.0


async def two_clients(env: RelayEnv) -> tuple[DeviceClient, DeviceClient]:
    return await env.client(await env.device()), await env.client(await env.device())


async def test_acquire_queue_grant_refresh_release(env: RelayEnv) -> None:
    a, b = await two_clients(env)
    with trio.fail_after(TIMEOUT_S):
        held = await a.locks.acquire("printer", lease_s=30)
        assert (held.resource, held.mode, held.owner) == ("printer", "exclusive", str(a.device_id))
        positions: list[int] = []
        queued = trio.Event()

        def on_queued(position: int) -> None:
            positions.append(position)
            queued.set()

        async with trio.open_nursery() as nursery:
            grants = []

            async def wait_for_it() -> None:
                grants.append(await b.locks.acquire("printer", wait_s=5, on_queued=on_queued))

            nursery.start_soon(wait_for_it)
            await queued.wait()
            refreshed = await a.locks.refresh("printer", held.token, lease_s=60)
            assert refreshed.token == held.token
            assert refreshed.expires_at > held.expires_at
            released = await a.locks.release("printer", held.token)
            assert (released.token, released.cause) == (held.token, "released")
        assert positions == [0]
        assert grants[0].token > held.token
        with pytest.raises(NackError) as stale:
            await a.locks.refresh("printer", held.token)
        assert stale.value.reason == NackReason.NOT_FOUND
        with pytest.raises(NackError) as foreign:
            await a.locks.release("printer", grants[0].token)  # b's lease
        assert foreign.value.reason == NackReason.NOT_PERMITTED
    assert a.locks.notices.statistics().current_buffer_used == 0  # a release by the holder is no notice


async def test_a_wait_that_times_out_is_refused_aborted(env: RelayEnv) -> None:
    a, b = await two_clients(env)
    with trio.fail_after(TIMEOUT_S):
        await a.locks.acquire("speaker")
        with pytest.raises(LockRefusedError) as timeout:
            await b.locks.acquire("speaker", wait_s=0.2)
        assert (timeout.value.reason, timeout.value.cause) == ("aborted", "timeout")
        with pytest.raises(LockRefusedError) as busy:
            await b.locks.acquire("speaker", wait_s=0)
        assert (busy.value.reason, busy.value.cause) == ("aborted", "busy")
        shared = await b.locks.acquire("shelf", mode="shared")
        also = await a.locks.acquire("shelf", mode="shared", wait_s=0)
        assert also.token > shared.token


async def test_a_deadlock_refuses_the_youngest_waiter(env: RelayEnv) -> None:
    a, b = await two_clients(env)
    with trio.fail_after(TIMEOUT_S):
        first = await a.locks.acquire("r1")
        second = await b.locks.acquire("r2")
        async with trio.open_nursery() as nursery:
            got: list[int] = []
            a_waits = trio.Event()

            async def a_takes_r2() -> None:
                got.append((await a.locks.acquire("r2", wait_s=5, on_queued=lambda _: a_waits.set())).token)

            nursery.start_soon(a_takes_r2)
            await a_waits.wait()
            with pytest.raises(LockRefusedError) as refused:
                await b.locks.acquire("r1", wait_s=5)
            assert refused.value.reason == "deadlock"
            assert refused.value.cycle is not None
            assert set(refused.value.cycle) == {str(a.device_id), str(b.device_id)}
            await b.locks.release("r2", second.token)
        assert got[0] > second.token
        await a.locks.release("r1", first.token)


async def test_the_holder_is_told_when_its_lease_expires(env: RelayEnv) -> None:
    (a,) = [await env.client(await env.device())]
    with trio.fail_after(TIMEOUT_S):
        lease = await a.locks.acquire("lamp", lease_s=0.2)
        notice = await a.locks.notices.receive()
    assert notice == LockExpired("lamp", lease.token)
    with pytest.raises(NackError):
        await a.locks.release("lamp", lease.token)


async def test_a_preempted_holder_is_told(start_relay: StartRelay) -> None:
    env = await start_relay(**{"locks.deadlock_policy": "preempt-holder"})
    a, b = await two_clients(env)
    with trio.fail_after(TIMEOUT_S):
        await a.locks.acquire("r1")
        young = await b.locks.acquire("r2")  # the youngest holder on the cycle: its lease goes
        async with trio.open_nursery() as nursery:
            a_waits = trio.Event()
            grants: list[int] = []

            async def a_takes_r2() -> None:
                grants.append(
                    (await a.locks.acquire("r2", wait_s=5, on_queued=lambda _: a_waits.set())).token
                )

            nursery.start_soon(a_takes_r2)
            await a_waits.wait()
            with pytest.raises(LockRefusedError):  # b keeps waiting for r1 until its own wait ends
                await b.locks.acquire("r1", wait_s=0.3)
        notice = await b.locks.notices.receive()
    assert isinstance(notice, LockPreempted)
    assert (notice.resource, notice.token) == ("r2", young.token)
    assert notice.cycle is not None
    assert grants[0] > young.token


async def test_locks_of_a_closed_session_go_after_the_grace(start_relay: StartRelay) -> None:
    grace = 0.5
    env = await start_relay(**{"locks.session_grace_s": grace})
    a, b = await two_clients(env)
    with trio.fail_after(TIMEOUT_S):
        lease = await a.locks.acquire("door", lease_s=60)
        await a.aclose()
        closed_at = trio.current_time()
        granted = await b.locks.acquire("door", wait_s=5)
    assert trio.current_time() - closed_at >= grace * 0.9
    assert granted.token > lease.token


async def test_a_device_that_reconnects_within_the_grace_keeps_its_locks(start_relay: StartRelay) -> None:
    env = await start_relay(**{"locks.session_grace_s": 3.0})
    dev = await env.device()
    a, b = await env.client(dev), await env.client(await env.device())
    with trio.fail_after(TIMEOUT_S):
        lease = await a.locks.acquire("door", lease_s=60)
        await a.aclose()
        again = await env.client(dev)  # the same device, a new connection
        refreshed = await again.locks.refresh("door", lease.token)
        assert refreshed.token == lease.token
        with pytest.raises(LockRefusedError) as busy:
            await b.locks.acquire("door", wait_s=3.5)  # past the grace: still held
        assert busy.value.cause == "timeout"
        released = await again.locks.release("door", lease.token)
    assert released.cause == "released"


async def test_a_resource_name_the_lock_service_refuses_is_nacked(env: RelayEnv) -> None:
    a = await env.client(await env.device())
    with trio.fail_after(TIMEOUT_S), pytest.raises(NackError) as bad:
        await a.locks.acquire("bell\x07")
    assert bad.value.reason == NackReason.INVALID_INPUT


async def test_a_release_that_waits_does_not_hold_up_later_frames(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With durable grants a release waits for its commit (on a cluster resource: for etcd); the
    connection's later frames are routed meanwhile, and the RELEASED answer comes when it is done."""
    env = await start_relay(**{"locks.durable_grants": True})
    locks = env.handle.api.locks
    assert not locks.releases_at_once("printer")
    entered, go_on = trio.Event(), trio.Event()
    release = locks.release

    async def slow_release(resource: str, token: int, *, owner: str) -> None:
        entered.set()
        await go_on.wait()
        await release(resource, token, owner=owner)

    monkeypatch.setattr(locks, "release", slow_release)
    a, b = await two_clients(env)
    with trio.fail_after(TIMEOUT_S):
        held = await a.locks.acquire("printer")
        async with trio.open_nursery() as nursery:
            answers = []

            async def release_it() -> None:
                answers.append(await a.locks.release("printer", held.token))

            nursery.start_soon(release_it)
            await entered.wait()
            await a.send(b.device_id, b"after the release", durable=False)  # ACKed while it waits
            assert (await b.receive()).payload == b"after the release"
            assert not answers
            go_on.set()
        assert (answers[0].token, answers[0].cause) == (held.token, "released")
        again = await b.locks.acquire("printer", wait_s=0)
        assert again.token > held.token
