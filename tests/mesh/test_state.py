"""The pure replication logic: hybrid logical clock, last-writer-wins merge, stamps, digests."""

from __future__ import annotations

import random
import uuid

from hypothesis import given
from hypothesis import strategies as st

from node.mesh.state import (
    BUCKETS,
    DEVICE,
    NETWORK,
    HybridClock,
    Key,
    Meta,
    Record,
    Stamp,
    VersionIndex,
    bucket_of,
    canonical,
    differing_buckets,
    hlc_ms,
    hlc_of_time,
    merge,
    stamp_for_change,
    to_push,
    wins,
)

State = dict[Key, Record]
NODES = ("node-a", "node-b", "node-c")
IDS = tuple(str(uuid.UUID(int=i)) for i in range(1, 6))

records = st.builds(
    Record,
    kind=st.sampled_from((DEVICE, NETWORK)),
    id=st.sampled_from(IDS),
    hlc=st.integers(0, 50),
    node=st.sampled_from(NODES),
    owner=st.sampled_from(NODES),
    deleted=st.booleans(),
    body=st.sampled_from(("", '{"name":"x"}', '{"name":"y"}')),
)
states = st.lists(records, max_size=12).map(lambda rs: merge({}, {r.key: r for r in rs}))


@given(states, states)
def test_merge_is_commutative(a: State, b: State) -> None:
    assert merge(a, b) == merge(b, a)


@given(states, states, states)
def test_merge_is_associative(a: State, b: State, c: State) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@given(states, states)
def test_merge_is_idempotent(a: State, b: State) -> None:
    once = merge(a, b)
    assert merge(once, b) == once
    assert merge(a, a) == a


@given(st.lists(records, max_size=20), st.randoms())
def test_delivery_order_and_repetition_do_not_matter(rs: list[Record], rnd: random.Random) -> None:
    in_order: State = {}
    for r in rs:
        in_order = merge(in_order, {r.key: r})
    shuffled = rs + rs
    rnd.shuffle(shuffled)
    other: State = {}
    for r in shuffled:
        other = merge(other, {r.key: r})
    assert in_order == other


def test_a_newer_version_wins_and_node_id_breaks_ties() -> None:
    old = Record(DEVICE, IDS[0], 10, "node-b", "node-b", False, "{}")
    newer = Record(DEVICE, IDS[0], 11, "node-a", "node-a", False, "{}")
    tie = Record(DEVICE, IDS[0], 10, "node-c", "node-c", False, "{}")
    assert wins(newer, old) and not wins(old, newer)
    assert wins(tie, old) and not wins(old, tie)
    tomb = Record(DEVICE, IDS[0], 12, "node-a", "node-a", True, "")
    assert merge({old.key: old}, {tomb.key: tomb})[old.key].deleted


def test_clock_is_monotonic_and_follows_causality() -> None:
    clock = HybridClock()
    first = clock.tick(1000.0)
    assert hlc_ms(first) == 1_000_000
    assert clock.tick(1000.0) == first + 1  # same millisecond: the logical counter moves
    assert clock.tick(999.0) == first + 2  # wall clock went back: still increasing
    remote = hlc_of_time(1000.5) + 7
    clock.observe(remote, 1000.0)
    assert clock.tick(1000.0) > remote


def test_clock_ignores_a_peer_too_far_ahead() -> None:
    clock = HybridClock(max_drift_s=10)
    clock.observe(hlc_of_time(2000.0), 1000.0)
    assert clock.ignored_ahead == 1
    assert hlc_ms(clock.tick(1000.0)) == 1_000_000


def test_stamps_for_local_changes() -> None:
    me = "node-a"
    live = Meta(DEVICE, IDS[0], 5, "node-b", "node-b", False)
    body = canonical({"name": "x", "status": "online"})
    assert stamp_for_change(DEVICE, None, None, body, me) == Stamp(me, False)  # new: this node owns it
    assert stamp_for_change(DEVICE, live, body, body, me) is None  # unchanged
    assert stamp_for_change(DEVICE, live, body, None, me) == Stamp("node-b", True)  # gone: tombstone
    assert stamp_for_change(DEVICE, None, None, None, me) is None  # nothing to delete
    offline = canonical({"name": "x", "status": "offline"})
    assert stamp_for_change(DEVICE, live, body, offline, me) is None  # owner decides presence
    renamed = canonical({"name": "z", "status": "online"})
    assert stamp_for_change(DEVICE, live, body, renamed, me) == Stamp("node-b", False)  # keeps its owner


def test_index_digests_follow_puts_and_removes() -> None:
    a, b = VersionIndex(), VersionIndex()
    m1 = Meta(DEVICE, IDS[0], 1, "node-a", "node-a", False)
    m2 = Meta(DEVICE, IDS[1], 2, "node-b", "node-b", False)
    a.put(m1)
    a.put(m2)
    b.put(m2)
    assert differing_buckets(a.digests, b.digests) == {bucket_of(DEVICE, IDS[0])}
    b.put(m1)
    assert differing_buckets(a.digests, b.digests) == set()
    assert a.owners[uuid.UUID(IDS[0]).bytes] == "node-a"
    a.put(Meta(DEVICE, IDS[0], hlc_of_time(100.0), "node-c", "node-c", True))
    assert uuid.UUID(IDS[0]).bytes not in a.owners
    assert a.tombstones_before(100_000) == []
    assert a.tombstones_before(100_001) == [(DEVICE, IDS[0])]
    a.remove((DEVICE, IDS[0]))
    b.remove((DEVICE, IDS[0]))
    assert a.digests == b.digests and a.owned_by == {"node-b": 1}
    assert differing_buckets(a.digests, [0]) == set(range(BUCKETS))


def test_to_push_sends_what_the_peer_lacks_or_holds_older() -> None:
    a, b = VersionIndex(), VersionIndex()
    for i, node in enumerate(NODES):
        a.put(Meta(DEVICE, IDS[i], 10, node, node, False))
    b.put(Meta(DEVICE, IDS[0], 10, "node-a", "node-a", False))  # equal
    b.put(Meta(DEVICE, IDS[1], 11, "node-b", "node-b", False))  # newer there
    buckets = differing_buckets(a.digests, b.digests)
    push = to_push(a.versions_in(buckets), b.versions_in(buckets))
    assert push == [(DEVICE, IDS[2])]
