"""Breaking a wait-for cycle under the configured policy (called by `LockState._settle`).

Cycle: owners [o0, o1, ..., ok-1] with o_i waiting for o_(i+1) (and the last for o0).

Priorities used for the decision, with priority inheritance: an owner counts with the highest of
  * its own priority on the cycle (the effective, aged priority of its waiting request for the
    abort policy; the priority its blocking leases were acquired with for the preempt policy), and
  * the effective priority of every waiter *outside* the cycle queued, in a conflicting mode, on a
    resource it holds.
Waiters on the cycle are left out of inheritance on purpose: around a cycle everyone blocks
everyone, so inheriting from them would give every member the cycle's top priority and make the
choice meaningless.

abort-waiter (default): the victim is the member with the lowest such priority, then the youngest
(its cycle request has the highest request id), then the smallest owner name. Its requests that
wait for the next member are refused with reason DEADLOCK.

preempt-holder: candidates are the members whose *held* leases block the previous member's cycle
request. The victim is the candidate with the lowest priority, then the youngest holder (latest
grant), then the smallest owner name; those leases are revoked (LockPreempted) and their tokens are
stale from then on. A self-wait (an owner waiting for its own lock) and a cycle made only of queue
order (no member holds what the previous one waits for) fall back to abort-waiter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.locks._types import (
    DeadlockPolicy,
    Lease,
    LockEvent,
    LockPreempted,
    compatible,
)
from node.locks._waitfor import choose_victim

if TYPE_CHECKING:
    from node.locks._records import Resource, Waiter
    from node.locks.state import LockState


def resolve(state: LockState, cycle: list[str], events: list[LockEvent]) -> None:
    """Break `cycle` (it exists in `state.graph`) by refusing a waiter or revoking leases."""
    nxt = {o: cycle[(i + 1) % len(cycle)] for i, o in enumerate(cycle)}
    if state.settings.deadlock_policy is DeadlockPolicy.PREEMPT_HOLDER and len(cycle) > 1:
        candidates = _holder_candidates(state, cycle, nxt)
        if candidates:
            _preempt(state, cycle, candidates, events)
            return
    _abort(state, cycle, nxt, events)


def _cycle_waiters(state: LockState, owner: str, target: str) -> list[Waiter]:
    return [w for w in state.owner_waiters(owner) if target in w.blockers()]


def _inherited(state: LockState, owner: str, members: set[str]) -> int:
    """Highest effective priority of outside waiters queued on what `owner` holds (-1: none)."""
    best = -1
    for res in state.resources.values():
        held = [lease for lease in res.holders.values() if lease.owner == owner]
        for waiter in res.queue:
            if waiter.req.owner in members:
                continue
            if any(not compatible(lease.mode, waiter.req.mode) for lease in held):
                best = max(best, waiter.effective)
    return best


def _rotated(cycle: list[str], first: str) -> tuple[str, ...]:
    i = cycle.index(first)
    return tuple(cycle[i:] + cycle[:i])


def _abort(state: LockState, cycle: list[str], nxt: dict[str, str], events: list[LockEvent]) -> None:
    members = set(cycle)
    waiting = {o: _cycle_waiters(state, o, nxt[o]) for o in cycle}

    def rank(owner: str) -> tuple[int, int, str]:
        own = max(w.effective for w in waiting[owner])
        return (max(own, _inherited(state, owner, members)), max(w.id for w in waiting[owner]), owner)

    victim = choose_victim(cycle, rank)
    order = _rotated(cycle, victim)
    for waiter in waiting[victim]:
        state.refuse(waiter, order, events)


def _holder_candidates(
    state: LockState, cycle: list[str], nxt: dict[str, str]
) -> dict[str, list[tuple[Resource, Lease]]]:
    """Per member: its leases that block the previous member's cycle request."""
    found: dict[str, list[tuple[Resource, Lease]]] = {}
    for owner in cycle:
        holder = nxt[owner]
        for waiter in _cycle_waiters(state, owner, holder):
            if holder not in waiter.holder_blockers:
                continue
            res = state.resources[waiter.req.resource]
            for lease in res.holders.values():
                if lease.owner == holder and not compatible(lease.mode, waiter.req.mode):
                    found.setdefault(holder, [])
                    if all(lease.token != have.token for _, have in found[holder]):
                        found[holder].append((res, lease))
    return found


def _preempt(
    state: LockState,
    cycle: list[str],
    candidates: dict[str, list[tuple[Resource, Lease]]],
    events: list[LockEvent],
) -> None:
    members = set(cycle)

    def rank(owner: str) -> tuple[int, int, str]:
        held = candidates[owner]
        own = max(lease.priority for _, lease in held)
        youngest = max(res.grant_seq[lease.token] for res, lease in held)
        return (max(own, _inherited(state, owner, members)), youngest, owner)

    victim = choose_victim(list(candidates), rank)
    order = _rotated(cycle, victim)
    for res, lease in candidates[victim]:
        state.revoke(res, lease.token, events)
        events.append(LockPreempted(lease, order))
        state.stats["preemptions"] += 1
