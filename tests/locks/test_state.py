"""The pure lock rules, driven with explicit `now`."""

from __future__ import annotations

import pytest

from node.errors import InvalidInput, NotFound, PermissionDenied, ResourceExhausted
from node.locks import (
    AcquireRequest,
    DeadlockPolicy,
    LockEvent,
    LockExpired,
    LockGranted,
    LockMode,
    LockPreempted,
    LockQueued,
    LockRefused,
    LockReleased,
    LockSettings,
    LockState,
    RefusalReason,
    ReleaseCause,
)

X, S = LockMode.EXCLUSIVE, LockMode.SHARED


def req(
    resource: str,
    owner: str,
    mode: LockMode = X,
    *,
    priority: int = 0,
    lease_s: float = 10.0,
    wait_s: float = 100.0,
    session: str | None = None,
) -> AcquireRequest:
    return AcquireRequest(resource, mode, owner, session or f"s-{owner}", lease_s, priority, wait_s)


def granted(events: list[LockEvent]) -> list[tuple[str, str, int]]:
    return [(e.lease.resource, e.lease.owner, e.lease.token) for e in events if isinstance(e, LockGranted)]


def refused(events: list[LockEvent]) -> list[tuple[str, RefusalReason]]:
    return [(e.owner, e.reason) for e in events if isinstance(e, LockRefused)]


def make(**overrides: object) -> LockState:
    return LockState(LockSettings(**overrides))  # type: ignore[arg-type]


def test_exclusive_queue_and_tokens_increase() -> None:
    st = make()
    _, ev = st.acquire(req("r", "a"), 0)
    assert granted(ev) == [("r", "a", 1)]
    wid, ev = st.acquire(req("r", "b"), 1)
    assert [e for e in ev if isinstance(e, LockQueued)] == [LockQueued(wid, "r", "b", 0)]
    ev = st.release("r", 1, "a", 2)
    assert granted(ev) == [("r", "b", 2)]
    assert [e.cause for e in ev if isinstance(e, LockReleased)] == [ReleaseCause.RELEASED]
    assert st.last_token("r") == 2


def test_shared_holders_coexist_with_distinct_tokens() -> None:
    st = make()
    tokens = [granted(st.acquire(req("r", o, S), 0)[1])[0][2] for o in "abc"]
    assert tokens == [1, 2, 3]
    view = st.view("r")
    assert view is not None
    assert len(view.holders) == 3


def test_shared_request_does_not_pass_waiting_exclusive_of_equal_or_higher_priority() -> None:
    st = make()
    st.acquire(req("r", "s1", S), 0)
    st.acquire(req("r", "x", X, priority=5), 0)
    _, low = st.acquire(req("r", "s2", S, priority=1), 0)
    _, same = st.acquire(req("r", "s3", S, priority=5), 0)
    assert granted(low) == []
    assert granted(same) == []
    _, high = st.acquire(req("r", "s4", S, priority=9), 0)
    assert granted(high) == [("r", "s4", 2)]  # higher priority goes ahead of the exclusive waiter
    ev = st.release("r", 1, "s1", 1) + st.release("r", 2, "s4", 1)
    assert granted(ev) == [("r", "x", 3)]
    ev = st.release("r", 3, "x", 2)
    assert granted(ev) == [("r", "s3", 4), ("r", "s2", 5)]


def test_priority_then_fifo() -> None:
    st = make()
    st.acquire(req("r", "h"), 0)
    for owner, prio in [("a", 1), ("b", 5), ("c", 1), ("d", 5)]:
        st.acquire(req("r", owner, priority=prio), 0)
    order = []
    token = 1
    holder = "h"
    for _ in range(4):
        ev = st.release("r", token, holder, 1)
        ((_, holder, token),) = granted(ev)
        order.append(holder)
    assert order == ["b", "d", "a", "c"]


def test_lease_expiry_frees_and_is_timed() -> None:
    st = make()
    st.acquire(req("r", "a", lease_s=5), 0)
    st.acquire(req("r", "b", lease_s=5), 1)
    assert st.next_deadline() == 5
    assert st.tick(4.999) == []
    ev = st.tick(5)
    assert [type(e) for e in ev] == [LockExpired, LockGranted]
    assert granted(ev) == [("r", "b", 2)]
    lease = st.holding("r", 2)
    assert lease is not None
    assert lease.expires_at == 10


def test_late_tick_grants_at_the_timer_time_and_may_expire_again() -> None:
    st = make()
    st.acquire(req("r", "a", lease_s=5), 0)
    st.acquire(req("r", "b", lease_s=5, wait_s=100), 0)
    ev = st.tick(12)  # the caller slept through both expiries
    assert [type(e) for e in ev] == [LockExpired, LockGranted, LockExpired]
    assert st.view("r") is None


def test_wait_timeout_and_try_lock() -> None:
    st = make()
    st.acquire(req("r", "a"), 0)
    _, ev = st.acquire(req("r", "b", wait_s=0), 0)
    assert refused(ev) == [("b", RefusalReason.TIMEOUT)]
    st.acquire(req("r", "c", wait_s=3), 0)
    assert refused(st.tick(3)) == [("c", RefusalReason.TIMEOUT)]
    assert st.statistics()["waiters"] == 0


def test_refresh_extends_and_fails_after_expiry() -> None:
    st = make()
    st.acquire(req("r", "a", lease_s=5), 0)
    lease, _ = st.refresh("r", 1, "a", 20, 4)
    assert lease.expires_at == 24
    assert st.tick(23) == []
    with pytest.raises(PermissionDenied):
        st.refresh("r", 1, "b", 20, 5)
    with pytest.raises(NotFound):
        st.refresh("r", 1, "a", 20, 24)
    with pytest.raises(NotFound):
        st.release("r", 1, "a", 25)


def test_session_end_refuses_waiters_and_releases_after_grace() -> None:
    st = make(session_grace_s=5)
    st.acquire(req("r", "a", session="s1"), 0)
    st.acquire(req("q", "b"), 0)
    st.acquire(req("q", "a", session="s1"), 0)
    ev = st.end_session("s1", 1)
    assert refused(ev) == [("a", RefusalReason.SESSION_ENDED)]
    with pytest.raises(InvalidInput):
        st.acquire(req("z", "a", session="s1"), 2)
    ev = st.tick(6)
    assert [(e.lease.owner, e.cause) for e in ev if isinstance(e, LockReleased)] == [
        ("a", ReleaseCause.SESSION_ENDED)
    ]


def test_resumed_session_keeps_its_locks() -> None:
    st = make(session_grace_s=5)
    st.acquire(req("r", "a", session="s1", lease_s=100), 0)
    st.end_session("s1", 1)
    st.resume_session("s1", 3)
    assert st.tick(10) == []
    assert st.holding("r", 1) is not None


def test_zero_grace_releases_at_once() -> None:
    st = make(session_grace_s=0)
    st.acquire(req("r", "a", session="s1"), 0)
    _, ev = st.acquire(req("r", "b"), 0)
    ev = st.end_session("s1", 1)
    assert granted(ev) == [("r", "b", 2)]


def test_counters_continue_from_start_values() -> None:
    st = LockState(LockSettings(), counters={"r": 41})
    _, ev = st.acquire(req("r", "a"), 0)
    assert granted(ev) == [("r", "a", 42)]


def test_deadlock_abort_lowest_priority_waiter() -> None:
    st = make()
    st.acquire(req("r1", "a", priority=1), 0)
    st.acquire(req("r2", "b", priority=5), 0)
    st.acquire(req("r2", "a", priority=1), 1)
    _, ev = st.acquire(req("r1", "b", priority=5), 2)
    assert refused(ev) == [("a", RefusalReason.DEADLOCK)]
    (refusal,) = [e for e in ev if isinstance(e, LockRefused)]
    assert refusal.cycle == ("a", "b")
    assert st.graph.edge_count() == 1  # b still waits for a, as it should


def test_deadlock_tie_goes_to_youngest_waiter() -> None:
    st = make()
    st.acquire(req("r1", "a"), 0)
    st.acquire(req("r2", "b"), 0)
    st.acquire(req("r2", "a"), 1)
    _, ev = st.acquire(req("r1", "b"), 2)  # b began waiting last
    assert refused(ev) == [("b", RefusalReason.DEADLOCK)]


def test_deadlock_priority_inheritance_protects_a_holder_that_blocks_an_urgent_waiter() -> None:
    st = make()
    st.acquire(req("r1", "a", priority=1), 0)
    st.acquire(req("r3", "a", priority=1), 0)
    st.acquire(req("r2", "b", priority=5), 0)
    st.acquire(req("r3", "c", priority=9), 0)  # c waits for a: a inherits 9
    st.acquire(req("r2", "a", priority=1), 1)
    _, ev = st.acquire(req("r1", "b", priority=5), 2)
    assert refused(ev) == [("b", RefusalReason.DEADLOCK)]


def test_deadlock_preempt_lowest_priority_holder() -> None:
    st = make(deadlock_policy=DeadlockPolicy.PREEMPT_HOLDER)
    st.acquire(req("r1", "a", priority=1), 0)
    st.acquire(req("r2", "b", priority=5), 0)
    st.acquire(req("r2", "a", priority=1), 1)
    _, ev = st.acquire(req("r1", "b", priority=5), 2)
    pre = [e for e in ev if isinstance(e, LockPreempted)]
    assert [(p.lease.resource, p.lease.owner, p.lease.token) for p in pre] == [("r1", "a", 1)]
    assert pre[0].cycle == ("a", "b")
    assert granted(ev) == [("r1", "b", 2)]
    assert refused(ev) == []


def test_self_wait_is_refused_under_both_policies() -> None:
    for policy in DeadlockPolicy:
        st = make(deadlock_policy=policy)
        st.acquire(req("r", "a", S), 0)
        _, ev = st.acquire(req("r", "a", X), 1)
        assert refused(ev) == [("a", RefusalReason.DEADLOCK)], policy
        assert st.holding("r", 1) is not None


def test_queue_order_cycle() -> None:
    st = make()
    st.acquire(req("r1", "h1"), 0)
    st.acquire(req("r2", "h2"), 0)
    st.acquire(req("r1", "b"), 1)
    st.acquire(req("r2", "a"), 1)
    st.acquire(req("r1", "a"), 2)  # a queues behind b on r1
    _, ev = st.acquire(req("r2", "b"), 3)  # b queues behind a on r2: cycle a -> b -> a
    assert refused(ev) == [("b", RefusalReason.DEADLOCK)]


def test_aging_lets_a_low_priority_waiter_overtake() -> None:
    st = make(aging_interval_s=10, aging_step=2, max_priority=10)
    st.acquire(req("r", "h", lease_s=1000), 0)
    st.acquire(req("r", "old", priority=0, wait_s=1000), 0)
    st.acquire(req("r", "new", priority=4, wait_s=1000), 25)
    st.tick(30)  # old has aged to 6 > 4
    view = st.view("r")
    assert view is not None
    assert [(w.owner, w.effective_priority) for w in view.waiters] == [("old", 6), ("new", 4)]


def test_limits() -> None:
    st = make(max_resources=2, max_waiters_per_resource=1)
    st.acquire(req("r1", "a"), 0)
    st.acquire(req("r2", "a"), 0)
    with pytest.raises(ResourceExhausted):
        st.acquire(req("r3", "a"), 0)
    st.acquire(req("r1", "b"), 0)
    with pytest.raises(ResourceExhausted):
        st.acquire(req("r1", "c"), 0)


def test_force_release_and_abandon() -> None:
    st = make()
    st.acquire(req("r", "a", S), 0)
    st.acquire(req("r", "b", S), 0)
    ev = st.force_release("r", None, 1)
    assert [e.cause for e in ev if isinstance(e, LockReleased)] == [ReleaseCause.ADMIN] * 2
    with pytest.raises(NotFound):
        st.force_release("r", None, 1)
    st.acquire(req("r", "c"), 2)
    ev = st.abandon("r", 3, 2)
    assert [e.cause for e in ev if isinstance(e, LockReleased)] == [ReleaseCause.ABANDONED]
    assert st.abandon("r", 3, 2) == []


def test_release_by_other_owner_is_denied() -> None:
    st = make()
    st.acquire(req("r", "a"), 0)
    with pytest.raises(PermissionDenied):
        st.release("r", 1, "b", 1)


def test_same_calls_same_events() -> None:
    def run() -> list[LockEvent]:
        st = make(aging_interval_s=1)
        out: list[LockEvent] = []
        out += st.acquire(req("r1", "a", priority=1), 0)[1]
        out += st.acquire(req("r2", "b", priority=1), 0)[1]
        out += st.acquire(req("r2", "a", priority=1), 1)[1]
        out += st.acquire(req("r1", "c", S), 1)[1]
        out += st.acquire(req("r1", "b", priority=1), 2)[1]
        out += st.tick(50)
        return out

    assert run() == run()


def test_reconnected_owner_waits_for_its_old_session_without_deadlock() -> None:
    st = make(session_grace_s=5)
    st.acquire(req("r", "a", session="old", lease_s=100), 0)
    st.end_session("old", 1)
    _, ev = st.acquire(req("r", "a", session="new", wait_s=10), 2)
    assert refused(ev) == []
    assert granted(st.tick(6)) == [("r", "a", 2)]
    st.acquire(req("q", "a", session="new"), 7)
    _, ev = st.acquire(req("q", "a", session="new"), 7)  # a live self-wait still deadlocks
    assert refused(ev) == [("a", RefusalReason.DEADLOCK)]
