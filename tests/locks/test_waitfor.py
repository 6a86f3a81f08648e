"""Hypothesis over random wait-for graphs: every cycle found, none invented, the victim rule holds."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.locks._waitfor import WaitForGraph, choose_victim


def reference_has_cycle(edges: list[tuple[int, int]]) -> bool:
    """Kahn's algorithm: a graph is acyclic iff every node can be removed in topological order."""
    nodes = {n for e in edges for n in e}
    indegree = dict.fromkeys(nodes, 0)
    out: dict[int, list[int]] = {n: [] for n in nodes}
    for a, b in edges:
        out[a].append(b)
        indegree[b] += 1
    ready = [n for n in nodes if indegree[n] == 0]
    removed = 0
    while ready:
        n = ready.pop()
        removed += 1
        for m in out[n]:
            indegree[m] -= 1
            if indegree[m] == 0:
                ready.append(m)
    return removed != len(nodes)


graphs = st.integers(2, 8).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
        st.permutations(list(range(n))),
        st.lists(
            st.tuples(st.booleans(), st.integers(0, n - 1), st.integers(0, n - 1)),
            min_size=1,
            max_size=60,
        ),
    )
)


@settings(max_examples=300, deadline=None)
@given(graphs)
def test_cycles_found_exactly_when_closed_and_victim_is_lowest(
    case: tuple[int, list[int], list[int], list[tuple[bool, int, int]]],
) -> None:
    _, priority, age, ops = case
    graph: WaitForGraph[int] = WaitForGraph()
    truth: Counter[tuple[int, int]] = Counter()

    def rank(node: int) -> tuple[int, int, str]:
        return (priority[node], age[node], f"n{node}")

    for is_add, a, b in ops:
        if not is_add:
            present = sorted(truth)
            if present:
                edge = present[(a * 8 + b) % len(present)]
                graph.remove_edge(*edge)
                truth[edge] -= 1
                if not truth[edge]:
                    del truth[edge]
            continue
        truth[(a, b)] += 1
        cycle = graph.add_edge(a, b)
        assert (cycle is not None) == reference_has_cycle(list(truth))
        while cycle is not None:
            assert cycle[0] == a
            assert len(cycle) == len(set(cycle))
            assert (len(cycle) == 1 and a == b) or cycle[1] == b
            ring = list(zip(cycle, cycle[1:] + cycle[:1], strict=True))
            assert all(edge in truth for edge in ring)
            victim = choose_victim(cycle, rank)
            lowest = min(priority[n] for n in cycle)
            youngest = max(age[n] for n in cycle if priority[n] == lowest)
            assert priority[victim] == lowest
            assert age[victim] == youngest  # ages are distinct: the tie-break is decisive
            # Break it the way the state does: the victim stops waiting for its successor.
            succ = dict(ring)[victim]
            for _ in range(truth.pop((victim, succ))):
                graph.remove_edge(victim, succ)
            cycle = graph.cycle_through(a, b)
        assert not reference_has_cycle(list(truth))
        assert sorted(graph.edges()) == sorted(truth)


def test_ties_on_priority_and_age_fall_to_the_smallest_name() -> None:
    ranks = {"b": (1, 7, "b"), "a": (1, 7, "a"), "c": (2, 9, "c")}
    assert choose_victim(["b", "c", "a"], ranks.__getitem__) == "a"


def test_youngest_wins_a_priority_tie() -> None:
    ranks = {"old": (1, 3, "old"), "young": (1, 8, "young"), "low": (0, 1, "low")}
    assert choose_victim(["old", "young"], ranks.__getitem__) == "young"
    assert choose_victim(["old", "young", "low"], ranks.__getitem__) == "low"


def test_counted_edges_and_self_loop() -> None:
    g: WaitForGraph[str] = WaitForGraph()
    assert g.add_edge("a", "b") is None
    assert g.add_edge("a", "b") is None
    g.remove_edge("a", "b")
    assert g.has_edge("a", "b")
    g.remove_edge("a", "b")
    assert not g.has_edge("a", "b")
    with pytest.raises(KeyError):
        g.remove_edge("a", "b")
    assert g.add_edge("x", "x") == ["x"]
    with pytest.raises(ValueError, match="empty"):
        choose_victim([], lambda n: (0, 0, n))
