"""The checker itself: hand-made histories, and agreement with brute force on random small ones."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .linearizability import EXCLUSIVE, SHARED, ModelState, Op, check, step


def acq(p: str, inv: int, resp: int | None, token: int | None, mode: str = EXCLUSIVE, r: str = "r") -> Op:
    return Op(p, "acquire", r, mode, token, None, inv, resp)


def rel(p: str, inv: int, resp: int | None, token: int, ok: bool = True, r: str = "r") -> Op:
    return Op(p, "release", r, EXCLUSIVE, token, ok, inv, resp)


def ref(p: str, inv: int, resp: int | None, token: int, ok: bool = True, r: str = "r") -> Op:
    return Op(p, "refresh", r, EXCLUSIVE, token, ok, inv, resp)


def lose(inv: int, token: int, r: str = "r") -> Op:
    return Op("env", "lose", r, EXCLUSIVE, token, None, inv, inv + 1)


LINEARIZABLE = {
    "sequential hand-over": [acq("a", 0, 1, 1), rel("a", 2, 3, 1), acq("b", 4, 5, 2)],
    "overlapping acquires ordered by the release": [
        acq("a", 0, 1, 1),
        acq("b", 2, 7, 2),
        rel("a", 3, 4, 1),
    ],
    "shared holders coexist": [acq("a", 0, 1, 1, SHARED), acq("b", 2, 3, 2, SHARED)],
    "expiry lets the next one in": [
        acq("a", 0, 1, 1),
        lose(2, 1),
        acq("b", 4, 5, 2),
        rel("a", 6, 7, 1, ok=False),
    ],
    "failed acquires are always allowed": [acq("a", 0, 1, 1), acq("b", 2, 3, None)],
    "a pending acquire may never have happened": [acq("a", 0, None, None), acq("b", 1, 2, 1)],
    "a pending release may have happened": [
        acq("a", 0, 1, 1),
        rel("a", 2, None, 1),
        acq("b", 4, 5, 2),
    ],
    "refresh that overlaps the expiry may succeed": [acq("a", 0, 1, 1), ref("a", 2, 5, 1), lose(3, 1)],
    "losing a token nobody got is a no-op": [lose(0, 7), acq("a", 2, 3, 8)],
    "resources are independent": [acq("a", 0, 1, 1, r="x"), acq("b", 2, 3, 1, r="y")],
}

NOT_LINEARIZABLE = {
    "two exclusive holders": [acq("a", 0, 1, 1), acq("b", 2, 3, 2)],
    "shared next to exclusive": [acq("a", 0, 1, 1, SHARED), acq("b", 2, 3, 2)],
    "token goes backwards": [acq("a", 0, 1, 5), rel("a", 2, 3, 5), acq("b", 4, 5, 3)],
    "token repeats": [acq("a", 0, 1, 5), rel("a", 2, 3, 5), acq("b", 4, 5, 5)],
    "release of a lock never held": [rel("a", 0, 1, 1)],
    "release by the wrong client": [acq("a", 0, 1, 1), rel("b", 2, 3, 1)],
    "release said not held while held": [acq("a", 0, 1, 1), rel("a", 2, 3, 1, ok=False)],
    "refresh after the lease was lost": [acq("a", 0, 1, 1), lose(2, 1), ref("a", 4, 5, 1)],
    "double release": [acq("a", 0, 1, 1), rel("a", 2, 3, 1), rel("a", 4, 5, 1)],
    "hand-over before the release was invoked": [
        acq("a", 0, 1, 1),
        acq("b", 2, 3, 2),
        rel("a", 4, 5, 1),
    ],
    "below the counter a restart started from": [acq("a", 0, 1, 3)],
}


@pytest.mark.parametrize("name", list(LINEARIZABLE))
def test_linearizable_histories_pass(name: str) -> None:
    assert check(LINEARIZABLE[name]).ok, name


@pytest.mark.parametrize("name", list(NOT_LINEARIZABLE))
def test_non_linearizable_histories_are_flagged(name: str) -> None:
    start = {"r": 3} if name.startswith("below") else None
    verdict = check(NOT_LINEARIZABLE[name], start)
    assert not verdict.ok, name
    assert verdict.resource == "r"


def brute_force(ops: list[Op]) -> bool:
    """Try every subset of the pending operations and every real-time-respecting order."""
    done = [o for o in ops if o.response is not None]
    pending = [o for o in ops if o.response is None]
    for k in range(len(pending) + 1):
        for extra in itertools.combinations(pending, k):
            chosen = done + list(extra)
            for order in itertools.permutations(chosen):
                if not _respects_real_time(order):
                    continue
                state: ModelState | None = (frozenset(), 0)
                for op in order:
                    assert state is not None
                    state = step(state, op)
                    if state is None:
                        break
                if state is not None:
                    return True
    return False


def _respects_real_time(order: tuple[Op, ...]) -> bool:
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            if b.response is not None and b.response < a.invoke:
                return False
    return True


@st.composite
def small_histories(draw: st.DrawFn) -> list[Op]:
    n = draw(st.integers(1, 5))
    stamps = draw(st.permutations(list(range(2 * n))))
    ops = []
    for i in range(n):
        a, b = sorted(stamps[2 * i : 2 * i + 2])
        kind = draw(st.sampled_from(["acquire", "release", "refresh", "lose"]))
        proc = draw(st.sampled_from(["p", "q"]))
        token = draw(st.integers(1, 3))
        pending = kind != "lose" and draw(st.booleans()) and draw(st.booleans())
        if kind == "acquire":
            token_or_none = None if draw(st.booleans()) and draw(st.booleans()) else token
            mode = draw(st.sampled_from([EXCLUSIVE, SHARED]))
            ops.append(Op(proc, kind, "r", mode, token_or_none, None, a, None if pending else b))
        elif kind == "lose":
            ops.append(Op("env", kind, "r", EXCLUSIVE, token, None, a, b))
        else:
            ok = draw(st.booleans())
            ops.append(Op(proc, kind, "r", EXCLUSIVE, token, ok, a, None if pending else b))
    return ops


@settings(max_examples=300, deadline=None)
@given(small_histories())
def test_checker_agrees_with_brute_force(ops: list[Op]) -> None:
    assert check(ops).ok == brute_force(ops)
