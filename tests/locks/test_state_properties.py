"""Hypothesis: random operation sequences keep every invariant of the lock state."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import NodeError
from node.locks import (
    AcquireRequest,
    DeadlockPolicy,
    LockEvent,
    LockGranted,
    LockMode,
    LockSettings,
    LockState,
    compatible_modes,
)

RESOURCES = ["r0", "r1", "r2"]
OWNERS = ["a", "b", "c", "d"]

op = st.one_of(
    st.tuples(
        st.just("acquire"),
        st.sampled_from(RESOURCES),
        st.sampled_from(OWNERS),
        st.sampled_from(list(LockMode)),
        st.integers(0, 3),
        st.sampled_from([1.0, 5.0, 20.0]),
        st.sampled_from([0.0, 2.0, 30.0]),
    ),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("refresh"), st.integers(0, 50), st.sampled_from([1.0, 10.0])),
    st.tuples(st.just("cancel"), st.integers(1, 60)),
    st.tuples(st.just("end"), st.sampled_from(OWNERS)),
    st.tuples(st.just("resume"), st.sampled_from(OWNERS)),
    st.tuples(st.just("force"), st.sampled_from(RESOURCES)),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0])),
)


def has_cycle(edges: list[tuple[str, str]]) -> bool:
    out: dict[str, list[str]] = {}
    for a, b in edges:
        out.setdefault(a, []).append(b)
    state: dict[str, int] = {}

    def visit(n: str) -> bool:
        state[n] = 1
        for m in out.get(n, []):
            if state.get(m) == 1 or (m not in state and visit(m)):
                return True
        state[n] = 2
        return False

    return any(n not in state and visit(n) for n in list(out))


def check(st_: LockState, now: float, last_tokens: dict[str, int], events: list[LockEvent]) -> None:
    for e in events:
        if isinstance(e, LockGranted):
            assert e.lease.token > last_tokens.get(e.lease.resource, 0)
            last_tokens[e.lease.resource] = e.lease.token
    edges: set[tuple[str, str]] = set()
    for name, res in st_.resources.items():
        assert res.holders or res.queue
        holders = list(res.holders.values())
        for i, h in enumerate(holders):
            assert h.expires_at > now
            assert h.token <= st_.last_token(name)
            for other in holders[i + 1 :]:
                assert compatible_modes(h.mode, other.mode)
        keys = [(-w.effective, w.id) for w in res.queue]
        assert keys == sorted(keys)
        if res.queue:
            head = res.queue[0].req.mode
            assert any(not compatible_modes(h.mode, head) for h in holders)
        for w in res.queue:
            assert w.deadline > now
            edges.update((w.req.owner, b) for b in w.blockers())
    assert edges == set(st_.graph.edges())
    assert not has_cycle(sorted(edges))
    assert st_.next_deadline() > now


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(op, min_size=1, max_size=80),
    policy=st.sampled_from(list(DeadlockPolicy)),
    aging=st.sampled_from([0.0, 2.0]),
)
def test_random_operations_keep_invariants(
    ops: list[tuple[object, ...]], policy: DeadlockPolicy, aging: float
) -> None:
    state = LockState(
        LockSettings(deadlock_policy=policy, aging_interval_s=aging, max_priority=5, session_grace_s=2)
    )
    now = 0.0
    last: dict[str, int] = {}
    for o in ops:
        kind = o[0]
        events: list[LockEvent] = []
        held = [lease for v in state.views() for lease in v.holders]
        try:
            if kind == "acquire":
                _, res, owner, mode, prio, lease_s, wait_s = o
                r = AcquireRequest(str(res), mode, str(owner), f"s-{owner}", lease_s, prio, wait_s)  # type: ignore[arg-type]
                events = state.acquire(r, now)[1]
            elif kind in ("release", "refresh") and held:
                lease = held[int(o[1]) % len(held)]  # type: ignore[call-overload]
                if kind == "release":
                    events = state.release(lease.resource, lease.token, lease.owner, now)
                else:
                    events = state.refresh(lease.resource, lease.token, lease.owner, o[2], now)[1]  # type: ignore[arg-type]
            elif kind == "cancel":
                events = state.cancel(int(o[1]), now)  # type: ignore[call-overload]
            elif kind == "end":
                events = state.end_session(f"s-{o[1]}", now)
            elif kind == "resume":
                events = state.resume_session(f"s-{o[1]}", now)
            elif kind == "force":
                events = state.force_release(str(o[1]), None, now)
            elif kind == "tick":
                now += float(o[1])  # type: ignore[arg-type]
                events = state.tick(now)
        except NodeError:
            pass
        check(state, now, last, events)
    final = state.tick(now + 1e6)
    check(state, now + 1e6, last, final)
    assert state.views() == []
    assert math.isinf(state.next_deadline())
