"""LockService on Trio: waits, timers, cancellation, notifications, journal and restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from node.clock import WallClock
from node.errors import Aborted, Deadlock, InvalidInput, NotFound, StoreError, Unavailable
from node.locks import (
    DeadlockPolicy,
    LockEvent,
    LockExpired,
    LockGranted,
    LockMode,
    LockPreempted,
    LockQueued,
    LockReleased,
    LockSettings,
    ReleaseCause,
)
from node.locks.journal import CounterReserved, LeaseRecord, MemoryLockJournal
from node.locks.service import LockService, open_lock_service, serve_locks

from .conftest import FlakyJournal

WALL = 1_700_000_000.0


@asynccontextmanager
async def service(journal: MemoryLockJournal, **overrides: Any) -> AsyncIterator[LockService]:
    settings = LockSettings(**overrides)
    async with open_lock_service(settings, journal, wall_clock=WallClock(WALL)) as svc:
        yield svc


async def test_acquire_release_and_inspect(journal: FlakyJournal) -> None:
    async with service(journal) as locks:
        lease = await locks.acquire("printer", owner="a", session="s1", lease_s=5)
        assert (lease.token, lease.owner, lease.mode) == (1, "a", LockMode.EXCLUSIVE)
        view = await locks.get("printer")
        assert [h.token for h in view.holders] == [1]
        assert [v.resource for v in locks.list()] == ["printer"]
        await locks.release("printer", 1, owner="a")
        with pytest.raises(NotFound):
            await locks.get("printer")
        with pytest.raises(NotFound):
            await locks.release("printer", 1, owner="a")


async def test_waiter_is_granted_on_release_and_told_it_queued(journal: FlakyJournal) -> None:
    queued: list[LockQueued] = []
    async with service(journal) as locks, trio.open_nursery() as nursery:
        first = await locks.acquire("r", owner="a", session="s1")
        got: list[int] = []

        async def second() -> None:
            lease = await locks.acquire("r", owner="b", session="s2", on_queued=queued.append)
            got.append(lease.token)

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert [(q.owner, q.position) for q in queued] == [("b", 0)]
        await locks.release("r", first.token, owner="a")
    assert got == [2]


async def test_wait_timeout(journal: FlakyJournal, autojump_clock: trio.testing.MockClock) -> None:
    async with service(journal) as locks:
        await locks.acquire("r", owner="a", session="s1", lease_s=100)
        start = trio.current_time()
        with pytest.raises(Aborted) as info:
            await locks.acquire("r", owner="b", session="s2", wait_s=7)
        assert info.value.extra["reason"] == "timeout"
        assert trio.current_time() - start == pytest.approx(7)
        with pytest.raises(Aborted):
            await locks.acquire("r", owner="b", session="s2", wait_s=0)
        assert locks.statistics()["waiters"] == 0


async def test_cancelled_wait_is_withdrawn(journal: FlakyJournal) -> None:
    async with service(journal) as locks:
        await locks.acquire("r", owner="a", session="s1")
        with trio.move_on_after(0.05):
            await locks.acquire("r", owner="b", session="s2")
        assert locks.statistics()["waiters"] == 0
        assert locks.statistics()["refusals_cancelled"] == 1


async def test_lease_expiry_notifies_and_hands_over(
    journal: FlakyJournal, autojump_clock: trio.testing.MockClock
) -> None:
    async with service(journal) as locks, locks.watch() as events:
        await locks.acquire("r", owner="a", session="s1", lease_s=3)
        lease = await locks.acquire("r", owner="b", session="s2", lease_s=3, wait_s=10)
        assert lease.token == 2
        assert trio.current_time() == pytest.approx(3)
        seen = [events.receive_nowait() for _ in range(events.statistics().current_buffer_used)]
        assert [type(e).__name__ for e in seen] == ["LockGranted", "LockQueued", "LockExpired", "LockGranted"]


@pytest.mark.parametrize("policy", list(DeadlockPolicy))
async def test_deadlock_abort_and_preempt_policies(policy: DeadlockPolicy) -> None:
    journal = FlakyJournal()
    results: dict[str, object] = {}
    async with service(journal, deadlock_policy=policy) as locks, locks.watch() as events:
        await locks.acquire("r1", owner="a", session="sa", priority=1)
        await locks.acquire("r2", owner="b", session="sb", priority=5)

        async def wait(owner: str, resource: str, prio: int) -> None:
            try:
                lease = await locks.acquire(resource, owner=owner, session="s" + owner, priority=prio)
                results[owner] = lease.token
            except Deadlock as exc:
                results[owner] = exc.extra["cycle"]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, "a", "r2", 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(wait, "b", "r1", 5)
            await trio.testing.wait_all_tasks_blocked()
            if policy is DeadlockPolicy.ABORT_WAITER:
                assert results == {"a": ["a", "b"]}
                await locks.release("r1", 1, owner="a")
                await locks.release("r2", 1, owner="b")
            else:
                assert results == {"b": 2}
                pre = [e for e in _drain(events) if isinstance(e, LockPreempted)]
                assert [(p.lease.owner, p.lease.token) for p in pre] == [("a", 1)]
                with pytest.raises(NotFound):
                    await locks.refresh("r1", 1, owner="a")
                await locks.release("r1", 2, owner="b")
                await locks.release("r2", 1, owner="b")
    if policy is DeadlockPolicy.ABORT_WAITER:
        assert results == {"a": ["a", "b"], "b": 2}
    else:
        assert results == {"b": 2, "a": 2}


def _drain(channel: trio.MemoryReceiveChannel[LockEvent]) -> list[LockEvent]:
    out = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_session_end_releases_after_grace(
    journal: FlakyJournal, autojump_clock: trio.testing.MockClock
) -> None:
    async with service(journal, session_grace_s=4) as locks, locks.watch() as events:
        await locks.acquire("r", owner="a", session="s1", lease_s=100)
        t0 = trio.current_time()
        locks.end_session("s1")
        lease = await locks.acquire("r", owner="b", session="s2", wait_s=100)
        assert trio.current_time() - t0 == pytest.approx(4)
        assert lease.token == 2
        released = [e for e in _drain(events) if isinstance(e, LockReleased)]
        assert [(e.lease.owner, e.cause) for e in released] == [("a", ReleaseCause.SESSION_ENDED)]


async def test_restart_continues_tokens_and_leases(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = MemoryLockJournal()
    async with service(journal, token_reserve_block=10) as locks:
        for _ in range(3):
            lease = await locks.acquire("r", owner="a", session="s1")
            await locks.release("r", lease.token, owner="a")
        held = await locks.acquire("r", owner="a", session="s1", lease_s=20)
        kept = await locks.acquire("q", owner="a", session="s1", lease_s=5)
    assert held.token == 4
    assert journal.counters["r"] >= 4
    await trio.sleep(3)  # the node is down for 3 s: "q" has 2 s left, "r" 17 s
    async with service(journal, token_reserve_block=10) as locks:
        view = await locks.get("q")
        assert view.holders[0].expires_at == pytest.approx(trio.current_time() + 2)
        await locks.refresh("r", held.token, owner="a", lease_s=20)
        await trio.sleep(2.5)
        with pytest.raises(NotFound):
            await locks.release("q", kept.token, owner="a")
        await locks.release("r", held.token, owner="a")
        again = await locks.acquire("r", owner="b", session="s2")
        assert held.token < again.token <= journal.counters["r"]


async def test_tokens_never_repeat_after_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    journal = MemoryLockJournal()
    issued: list[int] = []
    for _ in range(3):
        with trio.CancelScope() as crash:
            async with service(journal, token_reserve_block=4) as locks:
                for _ in range(6):
                    lease = await locks.acquire("r", owner="a", session="s", lease_s=1)
                    issued.append(lease.token)
                    await locks.release("r", lease.token, owner="a")
                crash.cancel()  # no flush on the way out: a crash
    assert issued == sorted(set(issued))
    assert all(token <= journal.counters["r"] for token in issued)


async def test_journal_failure_fails_the_grant_and_frees_the_lock(journal: FlakyJournal) -> None:
    async with service(journal, journal_retry_s=0.01) as locks:
        journal.fail = True
        with pytest.raises(StoreError):
            await locks.acquire("new", owner="a", session="s1")
        assert locks.list() == []
        journal.fail = False
        lease = await locks.acquire("new", owner="a", session="s1")
        assert lease.token == 2


async def test_grant_is_withheld_when_lost_before_delivery(
    journal: FlakyJournal, autojump_clock: trio.testing.MockClock
) -> None:
    async with service(journal, journal_timeout_s=30) as locks:
        journal.delay_s = 10  # the first grant of a resource waits for its counter reservation
        with pytest.raises(Aborted) as info:
            await locks.acquire("slow", owner="a", session="s1", lease_s=5)
        assert info.value.extra["reason"] == "lost"
        assert locks.statistics()["grants_withheld"] == 1
        assert locks.list() == []


async def test_durable_grants_wait_for_the_lease_record(journal: FlakyJournal) -> None:
    async with service(journal, durable_grants=True) as locks:
        lease = await locks.acquire("r", owner="a", session="s1")
        assert ("r", lease.token) in journal.leases
        await locks.release("r", lease.token, owner="a")
        assert journal.leases == {}


async def test_watcher_that_falls_behind_is_closed(journal: FlakyJournal) -> None:
    async with service(journal, watch_queue_size=2) as locks, locks.watch() as events:
        for _ in range(3):
            lease = await locks.acquire("r", owner="a", session="s1")
            await locks.release("r", lease.token, owner="a")
        got = [e async for e in events]
        assert len(got) == 2
        assert locks.statistics()["watchers_overflowed"] == 1


async def test_filtered_watch(journal: FlakyJournal) -> None:
    def wanted(e: LockEvent) -> bool:
        return isinstance(e, LockExpired | LockReleased)

    async with service(journal) as locks, locks.watch(wanted) as events:
        lease = await locks.acquire("r", owner="a", session="s1")
        await locks.release("r", lease.token, owner="a")
        (event,) = _drain(events)
        assert isinstance(event, LockReleased)


async def test_validation_and_clamping(journal: FlakyJournal) -> None:
    async with service(journal, max_lease_s=60, max_priority=10) as locks:
        lease = await locks.acquire("r", owner="a", session="s", lease_s=1e9)
        assert lease.lease_s == 60
        bad: list[dict[str, Any]] = [
            {"owner": ""},
            {"priority": 11},
            {"lease_s": 0},
            {"lease_s": float("nan")},
            {"wait_s": -1},
            {"owner": "x" * 300},
            {"owner": "a\nb"},
        ]
        for kwargs in bad:
            args = {"owner": "o", "session": "s", **kwargs}
            with pytest.raises(InvalidInput):
                await locks.acquire("q", **args)


async def test_apply_settings_live_and_restart_fields(journal: FlakyJournal) -> None:
    async with service(journal) as locks:
        restart = locks.apply_settings(
            LockSettings(default_lease_s=5, max_lease_s=10, token_reserve_block=7, etcd_lease_ttl_s=30)
        )
        assert restart == ("token_reserve_block", "etcd_lease_ttl_s")
        lease = await locks.acquire("r", owner="a", session="s", lease_s=100)
        assert lease.lease_s == 10


async def test_stopping_service_fails_waiters(journal: FlakyJournal) -> None:
    errors: list[Exception] = []
    async with trio.open_nursery() as nursery, service(journal) as locks:
        await locks.acquire("r", owner="a", session="s1")

        async def waiter() -> None:
            try:
                await locks.acquire("r", owner="b", session="s2")
            except Unavailable as exc:
                errors.append(exc)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 1


async def test_serve_locks_reports_the_service(journal: FlakyJournal) -> None:
    async with trio.open_nursery() as nursery:
        locks = await nursery.start(serve_locks, LockSettings(), journal)
        assert isinstance(locks, LockService)
        lease = await locks.acquire("r", owner="a", session="s")
        assert lease.token == 1
        nursery.cancel_scope.cancel()


def test_records_are_idempotent() -> None:
    from node.locks.journal import LeaseEnded, apply_records

    counters: dict[str, int] = {}
    leases: dict[tuple[str, int], LeaseRecord] = {}
    rec = LeaseRecord("r", 3, "a", "s", LockMode.SHARED, 0, 5.0, 10.0)
    batch = [CounterReserved("r", 10), rec, CounterReserved("r", 5), LeaseEnded("r", 2)]
    apply_records(counters, leases, batch)
    apply_records(counters, leases, batch)
    assert counters == {"r": 10}
    assert leases == {("r", 3): rec}


async def test_grant_racing_with_cancellation_is_released(journal: FlakyJournal) -> None:
    async with service(journal) as locks, locks.watch() as events:
        await locks.acquire("warm", owner="a", session="s1")  # the token block is reserved
        with trio.CancelScope() as scope:
            scope.cancel()  # the caller is cancelled by the time the grant is handed over
            await locks.acquire("r", owner="b", session="s2")
        assert scope.cancelled_caught
        causes = [e.cause for e in _drain(events) if isinstance(e, LockReleased)]
        assert causes == [ReleaseCause.ABANDONED]
        assert [v.resource for v in locks.list()] == ["warm"]


async def test_grants_at_once_predicts_an_immediate_grant(journal: FlakyJournal) -> None:
    async with service(journal) as locks:
        # A resource's first token is not reserved yet: its grant waits for that commit.
        assert not locks.grants_at_once("r", LockMode.EXCLUSIVE)
        first = await locks.acquire("r", owner="a", session="s1", mode=LockMode.SHARED)
        await locks.flush()
        assert locks.grants_at_once("r", LockMode.SHARED)  # shared holders coexist
        assert not locks.grants_at_once("r", LockMode.EXCLUSIVE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: locks.acquire("r", owner="b", session="s2"))
            await trio.testing.wait_all_tasks_blocked()
            assert not locks.grants_at_once("r", LockMode.SHARED)  # would overtake a waiter
            await locks.release("r", first.token, owner="a")
        second = (await locks.get("r")).holders[0]
        await locks.release("r", second.token, owner="b")
        assert locks.grants_at_once("r", LockMode.EXCLUSIVE)
        lease = await locks.acquire("r", owner="a", session="s1")
        assert lease.token == second.token + 1
        await locks.release("r", lease.token, owner="a")
        assert locks.releases_at_once("r")
    async with service(journal, durable_grants=True) as locks:
        await locks.release("r", (await locks.acquire("r", owner="a", session="s1")).token, owner="a")
        assert not locks.grants_at_once("r", LockMode.EXCLUSIVE)  # durable grants always wait
        assert not locks.releases_at_once("r")  # and so do their releases


async def test_acquire_at_once_grants_a_free_lock_without_a_checkpoint(journal: FlakyJournal) -> None:
    async with service(journal) as locks, locks.watch() as events:
        # Not yet predictable (first token unreserved): nothing is requested, no event.
        assert locks.acquire_at_once("r", owner="a", session="s1") is None
        assert locks.list() == []
        first = await locks.acquire("r", owner="a", session="s1")
        await locks.flush()
        _drain(events)
        with trio.CancelScope() as scope:
            scope.cancel()  # a checkpoint would raise Cancelled
            assert locks.acquire_at_once("r", owner="b", session="s2") is None  # held: would wait
        await locks.release("r", first.token, owner="a")
        with trio.CancelScope() as scope:
            scope.cancel()
            lease = locks.acquire_at_once("r", owner="b", session="s2", lease_s=5, priority=3)
        assert not scope.cancelled_caught
        assert lease is not None
        assert (lease.owner, lease.token, lease.lease_s, lease.priority) == ("b", first.token + 1, 5, 3)
        assert (await locks.get("r")).holders == (lease,)
        assert [type(e) for e in _drain(events)] == [LockReleased, LockGranted]
        await locks.release("r", lease.token, owner="b")
        with pytest.raises(InvalidInput):
            locks.acquire_at_once("r", owner="b", session="s2", lease_s=-1)  # validated as acquire


async def test_grants_at_once_is_false_once_stopped(journal: FlakyJournal) -> None:
    async with service(journal) as locks:
        await locks.release("r", (await locks.acquire("r", owner="a", session="s1")).token, owner="a")
        await locks.flush()
        assert locks.grants_at_once("r", LockMode.EXCLUSIVE)
    assert not locks.grants_at_once("r", LockMode.EXCLUSIVE)
