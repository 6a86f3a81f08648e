"""The pure election rules: what a node may claim given its lease's validity, history, tenures."""

from __future__ import annotations

import pytest

from node.mesh._election_state import ElectionState

WALL0 = 1_000_000.0  # wall = WALL0 + now in these tests


def etcd_state(history_max: int = 64) -> ElectionState:
    return ElectionState("me", "etcd", WALL0, history_max=history_max)


def test_standalone_is_its_own_leader_without_a_term() -> None:
    state = ElectionState("me", "standalone", WALL0)
    status = state.status(now=1e9, wall=WALL0 + 1e9)
    assert (status["mode"], status["leader"], status["term"], status["is_leader"]) == (
        "standalone",
        "me",
        None,
        True,
    )
    assert "its own leader" in status["detail"]
    assert state.term(1e9) is None
    with pytest.raises(ValueError, match="standalone"):
        state.lost(0.0, WALL0, "x")


def test_nothing_known_before_the_first_read() -> None:
    status = etcd_state().status(now=5.0, wall=WALL0 + 5)
    assert (status["leader"], status["term"], status["is_leader"]) == (None, None, False)


def test_follower_sees_the_leader_until_its_own_lease_may_have_lapsed() -> None:
    state = etcd_state()
    state.observed("other", 7, own=False, valid_until=10.0, now=1.0, wall=WALL0 + 1)
    assert state.status(9.99, WALL0 + 9.99)["leader"] == "other"
    assert not state.is_leader(9.99)
    status = state.status(10.0, WALL0 + 10)
    assert (status["leader"], status["term"]) == (None, None)
    assert status["since"] == WALL0 + 10  # the moment the view lapsed, not when it was noticed


def test_leader_claims_only_while_its_lease_is_valid() -> None:
    state = etcd_state()
    state.observed("me", 42, own=True, valid_until=10.0, now=1.0, wall=WALL0 + 1)
    assert state.is_leader(9.999) and state.term(9.999) == 42
    assert not state.is_leader(10.0) and state.term(10.0) is None
    late = state.status(now=25.0, wall=WALL0 + 25)  # noticed late: the tenure still ends at 10
    assert late["tenures"] == [{"term": 42, "started_at": WALL0 + 1, "ended_at": WALL0 + 10}]
    assert late["is_leader"] is False and late["leader"] is None


def test_renewals_extend_the_claim() -> None:
    state = etcd_state()
    state.observed("me", 42, own=True, valid_until=10.0, now=1.0, wall=WALL0 + 1)
    state.observed("me", 42, own=True, valid_until=20.0, now=9.0, wall=WALL0 + 9)
    assert state.is_leader(19.0)
    assert len(state.history) == 1  # the same leader and term is not a change
    assert [t.term for t in state.tenures] == [42]


def test_a_view_read_through_a_lapsed_lease_is_ignored() -> None:
    state = etcd_state()
    state.observed("me", 42, own=True, valid_until=5.0, now=6.0, wall=WALL0 + 6)
    assert not state.is_leader(6.0)
    assert state.status(6.0, WALL0 + 6)["leader"] is None
    assert not state.tenures


def test_lost_ends_the_tenure_at_once() -> None:
    state = etcd_state()
    state.observed("me", 42, own=True, valid_until=10.0, now=1.0, wall=WALL0 + 1)
    state.lost(now=3.0, wall=WALL0 + 3, reason="etcd unreachable")
    status = state.status(3.0, WALL0 + 3)
    assert (status["leader"], status["is_leader"]) == (None, False)
    assert status["detail"] == "no leader known: etcd unreachable"
    assert status["tenures"][-1]["ended_at"] == WALL0 + 3


def test_takeover_history_has_increasing_terms_and_disjoint_tenures() -> None:
    state = etcd_state()
    state.observed("a", 5, own=False, valid_until=10.0, now=1.0, wall=WALL0 + 1)
    state.observed("me", 9, own=True, valid_until=14.0, now=8.0, wall=WALL0 + 8)
    state.lost(now=12.0, wall=WALL0 + 12, reason="lease revoked")
    state.observed("me", 15, own=True, valid_until=20.0, now=13.0, wall=WALL0 + 13)
    changes = [(c.leader, c.term) for c in state.history]
    assert changes == [("a", 5), ("me", 9), (None, None), ("me", 15)]
    tenures = [t.as_dict() for t in state.tenures]
    assert tenures == [
        {"term": 9, "started_at": WALL0 + 8, "ended_at": WALL0 + 12},
        {"term": 15, "started_at": WALL0 + 13, "ended_at": None},
    ]


def test_history_is_bounded() -> None:
    state = etcd_state(history_max=4)
    for term in range(1, 20):
        state.observed(f"n{term}", term, own=False, valid_until=100.0, now=float(term), wall=WALL0 + term)
    assert [c.term for c in state.history] == [16, 17, 18, 19]


def test_a_renewal_extends_only_a_view_that_is_still_valid() -> None:
    state = etcd_state()
    state.observed("me", 42, own=True, valid_until=10.0, now=1.0, wall=WALL0 + 1)
    state.renewed(valid_until=13.0, now=9.0, wall=WALL0 + 9)
    assert state.is_leader(12.9)
    state.renewed(valid_until=12.0, now=10.0, wall=WALL0 + 10)  # never shortened by a late answer
    assert state.is_leader(12.9)
    state.renewed(valid_until=30.0, now=13.5, wall=WALL0 + 13.5)  # too late: the claim had lapsed
    assert not state.is_leader(14.0)
    assert state.tenures[-1].ended_at == WALL0 + 13
    state.observed("me", 42, own=True, valid_until=30.0, now=14.0, wall=WALL0 + 14)  # read again
    assert state.is_leader(14.0)
    assert [(t.term, t.started_at, t.ended_at) for t in state.tenures] == [
        (42, WALL0 + 1, WALL0 + 13),
        (42, WALL0 + 14, None),
    ]
