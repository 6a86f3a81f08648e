"""Wait-for edges of one resource's queue (the graph's input), recomputed after each change.

Transitive reduction: a waiter at the front of the queue (nobody conflicting ahead) waits for the
owners of the holders it conflicts with; a waiter behind waits for the conflicting waiter(s)
directly ahead (an exclusive waiter for the waiter, or run of shared waiters, right before it; a
shared waiter for the nearest exclusive waiter ahead) and always for its own owner's conflicting
holding (a self-wait). Reachability is the same as with every edge, at a fraction of the updates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.locks._types import LockMode, compatible

if TYPE_CHECKING:
    from node.locks._records import Resource, Waiter
    from node.locks.state import LockState


def resync(state: LockState, res: Resource) -> list[tuple[str, str]]:
    """Recompute the blockers of every waiter of `res`; return the edges that appeared."""
    added: list[tuple[str, str]] = []
    run: list[str] = []
    nearest_exclusive: str | None = None
    for index, waiter in enumerate(res.queue):
        mode, owner = waiter.req.mode, waiter.req.owner
        ahead: tuple[str, ...] = ()
        if index and mode is LockMode.EXCLUSIVE:
            ahead = tuple(run) if run else (res.queue[index - 1].req.owner,)
        elif index and nearest_exclusive is not None:
            ahead = (nearest_exclusive,)
        front = not ahead
        ahead = tuple(o for o in dict.fromkeys(ahead) if o != owner)
        holders = _holder_blockers(state, res, mode, owner, front=front)
        added.extend(set_blockers(state, waiter, holders, ahead))
        if mode is LockMode.EXCLUSIVE:
            nearest_exclusive, run = owner, []
        else:
            run.append(owner)
    return added


def _holder_blockers(
    state: LockState, res: Resource, mode: LockMode, owner: str, *, front: bool
) -> tuple[str, ...]:
    """Owners of the conflicting holders a waiter waits for directly.

    Only waiters at the front of the queue (nobody conflicting ahead) get edges to other
    owners' holders; the ones behind reach them through the queue edges, so a hand-over
    changes a couple of edges instead of one per waiter. A waiter's edge to its own owner's
    holding is always kept: that is a self-wait, a deadlock wherever it queues. A holder
    whose session has ended waits for nothing and goes at the end of its grace period: it
    cannot be on a cycle, and is no self-wait for its reconnected owner.
    """
    return tuple(
        dict.fromkeys(
            h.owner
            for h in res.holders.values()
            if (front or h.owner == owner) and not compatible(h.mode, mode) and not state.ending(h.session)
        )
    )


def set_blockers(
    state: LockState, waiter: Waiter, holders: tuple[str, ...], ahead: tuple[str, ...]
) -> list[tuple[str, str]]:
    if holders == waiter.holder_blockers and ahead == waiter.queue_blockers:
        return []  # the common case on a hand-over: nothing changed for this waiter
    old = waiter.blockers()
    waiter.holder_blockers, waiter.queue_blockers = holders, ahead
    new = waiter.blockers()
    if old == new:
        return []
    owner = waiter.req.owner
    for b in old:
        if b not in new:
            state.graph.remove_edge(owner, b)
    added = []
    for b in new:
        if b not in old:
            state.graph.add_edge(owner, b)
            added.append((owner, b))
    return added
