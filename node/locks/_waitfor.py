"""A wait-for graph between lock owners, kept incrementally, and the deadlock victim rule.

An edge a -> b means "a waits for b" (b holds, or is queued ahead for, something a needs). Edges are
reference-counted because one owner may wait for another for several reasons at once; an edge
exists while its count is positive. The graph is kept acyclic: a cycle can only appear when an
edge is added, so `add_edge` reports the cycle that edge closes and the caller breaks it before
anything else happens. Everything iterates in insertion order, so results are deterministic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

N = TypeVar("N", bound=Hashable)


class WaitForGraph(Generic[N]):
    """Directed graph with counted edges and cycle detection on insertion."""

    def __init__(self) -> None:
        self._out: dict[N, dict[N, int]] = {}

    def add_edge(self, a: N, b: N) -> list[N] | None:
        """Count one more reason for a -> b; return the cycle it closes (a first), or None."""
        targets = self._out.setdefault(a, {})
        count = targets.get(b, 0)
        targets[b] = count + 1
        if count:
            return None
        return self.cycle_through(a, b)

    def remove_edge(self, a: N, b: N) -> None:
        """Drop one reason for a -> b (the edge disappears with its last reason)."""
        targets = self._out.get(a)
        if targets is None or b not in targets:
            raise KeyError((a, b))
        if targets[b] > 1:
            targets[b] -= 1
            return
        del targets[b]
        if not targets:
            del self._out[a]

    def has_edge(self, a: N, b: N) -> bool:
        return b in self._out.get(a, {})

    def edges(self) -> list[tuple[N, N]]:
        return [(a, b) for a, targets in self._out.items() for b in targets]

    def edge_count(self) -> int:
        return sum(len(targets) for targets in self._out.values())

    def cycle_through(self, a: N, b: N) -> list[N] | None:
        """If the edge a -> b exists and lies on a cycle, return the shortest one as [a, b, ...]."""
        if not self.has_edge(a, b):
            return None
        if a == b:
            return [a]
        parents: dict[N, N] = {b: b}
        frontier: deque[N] = deque([b])
        while frontier:
            node = frontier.popleft()
            for nxt in self._out.get(node, {}):
                if nxt in parents:
                    continue
                parents[nxt] = node
                if nxt == a:
                    return self._path(parents, b, a)
                frontier.append(nxt)
        return None

    @staticmethod
    def _path(parents: dict[N, N], start: N, end: N) -> list[N]:
        path = [end]
        node = end
        while node != start:
            node = parents[node]
            path.append(node)
        path.reverse()  # start .. end, and end == a closes the cycle back to the start
        return [path[-1], *path[:-1]]


def choose_victim(cycle: Sequence[N], rank: Callable[[N], tuple[int, int, str]]) -> N:
    """The member with the lowest priority; ties go to the youngest, then the smallest name.

    `rank(member)` returns (priority, age_seq, name): a larger age_seq is younger (it began
    waiting, or was granted, later). The victim minimises (priority, -age_seq, name).
    """
    if not cycle:
        raise ValueError("empty cycle")
    return min(cycle, key=lambda member: _victim_key(rank(member)))


def _victim_key(rank: tuple[int, int, str]) -> tuple[int, int, str]:
    priority, age_seq, name = rank
    return (priority, -age_seq, name)
