"""A Wing-Gong linearizability checker for lock histories, split per resource.

A history is a list of operations, each with an invocation and a response stamp from one logical
clock (stamps are unique; an operation that never returned has `response=None` and may or may not
have taken effect). `check` looks, per resource, for a total order of the operations that respects
real time (A before B whenever A responded before B was invoked) and that a sequential lock
accepts. The search is Wing & Gong's: repeatedly pick an operation that may come first (invoked
before every remaining operation's response), apply it to the model, backtrack on failure; with
Lowe's memo of (set of linearized operations, model state) so no configuration is explored twice.

The sequential model of one resource: a set of holders (token, client, mode) and the last token.
  acquire(mode) -> token: compatible with every holder, token > last token; adds the holder.
  acquire(mode) -> None (refused, timed out, deadlock, unavailable): no effect, always allowed.
  release(token) -> True: the client holds token; removes it.  -> False: nobody holds token.
  refresh(token) -> True: the client holds token.               -> False: nobody holds token.
  lose(token) (environment: expiry, preemption, session end, admin, crash): removes the holder;
    a token nobody holds is a no-op (a grant that never reached its caller).
  restore(token, mode) (environment: a restart brought back a lease whose end was not yet
    journaled): the holder is back; it must be compatible with the holders there are.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

Holder = tuple[int, str, str]  # (token, client, mode)
ModelState = tuple[frozenset[Holder], int]

EXCLUSIVE, SHARED = "exclusive", "shared"


@dataclass
class Op:
    process: str
    kind: str  # acquire | release | refresh | lose | restore
    resource: str
    mode: str = EXCLUSIVE
    token: int | None = None  # argument of release/refresh/lose; result of a granted acquire
    ok: bool | None = None  # result of release/refresh (acquire: token is not None)
    invoke: int = 0
    response: int | None = None


def step(state: ModelState, op: Op) -> ModelState | None:
    """Apply `op` to the sequential model; None when the model forbids its result."""
    holders, last = state
    held = {h[0]: h for h in holders}
    if op.kind == "acquire":
        if op.token is None:
            return state
        if op.token <= last:
            return None
        if any(op.mode == EXCLUSIVE or h[2] == EXCLUSIVE for h in holders):
            return None
        return holders | {(op.token, op.process, op.mode)}, op.token
    if op.kind == "lose":
        h = held.get(op.token)  # type: ignore[arg-type]
        return (holders - {h}, last) if h is not None else state
    if op.kind == "restore":
        assert op.token is not None
        if op.token in held:
            return state
        if any(op.mode == EXCLUSIVE or h[2] == EXCLUSIVE for h in holders):
            return None
        return holders | {(op.token, op.process, op.mode)}, max(last, op.token)
    h = held.get(op.token)  # type: ignore[arg-type]
    if not op.ok:
        return state if h is None else None
    if h is None or h[1] != op.process:
        return None
    return (holders - {h}, last) if op.kind == "release" else state


@dataclass
class Verdict:
    ok: bool
    resource: str | None = None
    explored: int = 0
    detail: str = ""


@dataclass
class History:
    """Records operations with stamps from one logical clock (`invoke`/`respond`)."""

    ops: list[Op] = field(default_factory=list)
    _clock: itertools.count[int] = field(default_factory=itertools.count)

    def invoke(self, op: Op) -> Op:
        op.invoke = next(self._clock)
        self.ops.append(op)
        return op

    def respond(self, op: Op, *, token: int | None = None, ok: bool | None = None) -> None:
        if op.kind == "acquire":
            op.token = token
        else:
            op.ok = ok
        op.response = next(self._clock)

    def point(self, op: Op) -> None:
        """An environment event that happened at one instant."""
        op.invoke = next(self._clock)
        op.response = next(self._clock)
        self.ops.append(op)


def check(ops: Iterable[Op], initial_last: dict[str, int] | None = None) -> Verdict:
    """Linearizable iff every resource's sub-history is (locks on different resources commute)."""
    by_resource: dict[str, list[Op]] = {}
    for op in ops:
        by_resource.setdefault(op.resource, []).append(op)
    explored = 0
    for resource, sub in by_resource.items():
        start: ModelState = (frozenset(), (initial_last or {}).get(resource, 0))
        ok, n = _search(sub, start)
        explored += n
        if not ok:
            return Verdict(False, resource, explored, f"{len(sub)} operations on {resource!r}")
    return Verdict(True, None, explored)


def _search(ops: list[Op], start: ModelState) -> tuple[bool, int]:
    ops = sorted(ops, key=lambda o: o.invoke)
    inf = float("inf")
    responses = [o.response if o.response is not None else inf for o in ops]
    must = 0
    for i, o in enumerate(ops):
        if o.response is not None:
            must |= 1 << i
    seen: set[tuple[int, ModelState]] = set()
    stack: list[tuple[int, ModelState]] = [(0, start)]
    explored = 0
    while stack:
        done, state = stack.pop()
        if done & must == must:
            return True, explored
        if (done, state) in seen:
            continue
        seen.add((done, state))
        explored += 1
        remaining = [i for i in range(len(ops)) if not done >> i & 1]
        first_response = min(responses[i] for i in remaining)
        for i in reversed(remaining):
            if ops[i].invoke > first_response:
                continue
            nxt = step(state, ops[i])
            if nxt is not None:
                stack.append((done | 1 << i, nxt))
    return False, explored
