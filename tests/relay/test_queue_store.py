"""The offline queue's queries on a real SQLite file: limits, both overflow policies, TTL, order."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest
from hypothesis import given
from hypothesis import strategies as st

from store import migrate, open_db
from store import queue as q
from store import registry as reg
from store.records import Device, Network

NET = str(uuid.uuid4())


def add_device(conn: apsw.Connection, network: str = NET) -> str:
    device_id = str(uuid.uuid4())
    reg.insert_device(
        conn,
        Device(device_id, network, "d", "physical", (), {}, 0.0, 0.0, 0.0, "online"),
    )
    return device_id


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    c = open_db(tmp_path / "q.db")
    migrate(c)
    reg.insert_network(c, Network(NET, "home", 0.0, None))
    yield c
    c.close()


def item(source: bytes, mid: int, *devices: str, size: int = 10, network: str | None = None) -> q.EnqueueItem:
    return q.EnqueueItem(b"f" * size, source, mid, devices=devices, network_id=network)


LIMITS = q.QueueLimits(max_messages=3, max_bytes=1000, ttl_s=60.0, policy="refuse-new")


def test_rows_come_back_in_order_within_budgets(conn: apsw.Connection) -> None:
    dev, src = add_device(conn), os.urandom(16)
    results = q.enqueue(conn, [item(src, i, dev, size=100) for i in range(3)], LIMITS, now=0.0)
    seqs = [r.queued[0][1] for r in results]
    assert seqs == sorted(seqs)
    rows, more = q.pending(conn, dev, 0, now=1.0, max_rows=2, max_bytes=10_000)
    assert [s for s, _ in rows] == seqs[:2] and more
    rows, more = q.pending(conn, dev, seqs[1], now=1.0, max_rows=10, max_bytes=10_000)
    assert [s for s, _ in rows] == seqs[2:] and not more
    rows, more = q.pending(conn, dev, 0, now=1.0, max_rows=10, max_bytes=150)
    assert len(rows) == 1 and more  # the byte budget stops after the first row
    rows, _ = q.pending(conn, dev, 0, now=1.0, max_rows=10, max_bytes=1)
    assert len(rows) == 1  # the first row always comes, however large


def test_refuse_new_when_full_by_count_or_bytes(conn: apsw.Connection) -> None:
    dev, src = add_device(conn), os.urandom(16)
    results = q.enqueue(conn, [item(src, i, dev) for i in range(4)], LIMITS, now=0.0)
    assert [bool(r.queued) for r in results] == [True, True, True, False]
    assert results[3].refused == [dev]
    other = add_device(conn)
    big = q.enqueue(conn, [item(src, 9, other, size=600), item(src, 10, other, size=600)], LIMITS, now=0.0)
    assert big[0].queued and big[1].refused == [other]
    assert q.enqueue(conn, [item(src, 11, other, size=2000)], LIMITS, now=0.0)[0].refused == [other]
    assert q.depth(conn, dev) == q.QueueDepth(3, 30, 0.0)


def test_drop_oldest_makes_room_and_reports_what_it_dropped(conn: apsw.Connection) -> None:
    dev, src = add_device(conn), os.urandom(16)
    limits = q.QueueLimits(3, 1000, 60.0, "drop-oldest")
    first = q.enqueue(conn, [item(src, i, dev) for i in range(3)], limits, now=0.0)
    result = q.enqueue(conn, [item(src, 3, dev), item(src, 4, dev)], limits, now=1.0)
    dropped = [d for r in result for d in r.dropped]
    assert [(d.source, d.message_id) for d in dropped] == [(src, 0), (src, 1)]
    assert [d.seq for d in dropped] == [first[0].queued[0][1], first[1].queued[0][1]]
    rows, _ = q.pending(conn, dev, 0, now=2.0, max_rows=10, max_bytes=10_000)
    assert len(rows) == 3
    assert q.depth(conn, dev).messages == 3
    heavy = q.enqueue(conn, [item(src, 5, dev, size=990)], limits, now=2.0)[0]
    assert heavy.queued and len(heavy.dropped) == 2  # by bytes: 10 + 990 fits in 1000
    assert q.depth(conn, dev) == q.QueueDepth(2, 1000, 1.0)


def test_retry_of_the_same_message_is_stored_once(conn: apsw.Connection) -> None:
    dev, src = add_device(conn), os.urandom(16)
    a = q.enqueue(conn, [item(src, 7, dev)], LIMITS, now=0.0)[0]
    b = q.enqueue(conn, [item(src, 7, dev)], LIMITS, now=1.0)[0]
    assert a.queued == b.queued
    assert q.depth(conn, dev).messages == 1


def test_u64_message_ids_survive(conn: apsw.Connection) -> None:
    dev, src = add_device(conn), os.urandom(16)
    big = (1 << 64) - 1
    q.enqueue(conn, [item(src, big, dev)], LIMITS, now=0.0)
    assert q.delete_delivered(conn, [(dev, src, big)]) == 1
    assert q.depth(conn, dev).messages == 0


@given(st.integers(0, (1 << 64) - 1))
def test_message_id_folding_round_trips(mid: int) -> None:
    folded = q.to_i64(mid)
    assert -(1 << 63) <= folded < (1 << 63)
    assert q.from_i64(folded) == mid


def test_delete_delivered_updates_depth_and_ignores_unknown(conn: apsw.Connection) -> None:
    dev, src = add_device(conn), os.urandom(16)
    q.enqueue(conn, [item(src, i, dev, size=100) for i in range(3)], LIMITS, now=0.0)
    assert q.delete_delivered(conn, [(dev, src, 1), (dev, src, 99), (dev, os.urandom(16), 0)]) == 1
    assert q.depth(conn, dev) == q.QueueDepth(2, 200, 0.0)


def test_ttl_purge_and_expired_rows_are_never_pending(conn: apsw.Connection) -> None:
    dev, src = add_device(conn), os.urandom(16)
    q.enqueue(conn, [item(src, 1, dev)], LIMITS, now=0.0)
    q.enqueue(conn, [item(src, 2, dev)], LIMITS, now=50.0)
    rows, _ = q.pending(conn, dev, 0, now=61.0, max_rows=10, max_bytes=10_000)
    assert len(rows) == 1  # the first expired at 60, even before a purge
    purged = q.purge_expired(conn, now=61.0, limit=100)
    assert [(r.source, r.message_id, r.device_id) for r in purged] == [(src, 1, dev)]
    assert q.depth(conn, dev).messages == 1
    assert q.purge_expired(conn, now=61.0, limit=100) == []


def test_broadcast_item_reaches_every_member_but_the_sender(conn: apsw.Connection) -> None:
    sender, a, b = add_device(conn), add_device(conn), add_device(conn)
    src = uuid.UUID(sender).bytes
    result = q.enqueue(conn, [q.EnqueueItem(b"x", src, 1, network_id=NET, exclude=sender)], LIMITS, now=0.0)[
        0
    ]
    assert sorted(d for d, _ in result.queued) == sorted([a, b])


def test_purge_device_and_totals(conn: apsw.Connection) -> None:
    a, b, src = add_device(conn), add_device(conn), os.urandom(16)
    q.enqueue(conn, [item(src, 1, a, b), item(src, 2, a)], LIMITS, now=0.0)
    assert q.totals(conn) == (2, 3, 30)
    assert q.purge_device(conn, a) == (2, 20)
    assert q.totals(conn) == (1, 1, 10)
    assert q.depth(conn, a) == q.QueueDepth(0, 0, None)


def test_unregistering_a_device_deletes_its_queue_and_groups(conn: apsw.Connection) -> None:
    dev, src = add_device(conn), os.urandom(16)
    q.enqueue(conn, [item(src, 1, dev)], LIMITS, now=0.0)
    q.join_group(conn, q.GroupMembership(b"g" * 16, dev, NET, "kitchen"), 0.0)
    reg.delete_device(conn, dev)
    assert q.totals(conn) == (0, 0, 0)
    assert q.memberships(conn) == []


def test_group_memberships(conn: apsw.Connection) -> None:
    a, b = add_device(conn), add_device(conn)
    g = b"g" * 16
    assert q.join_group(conn, q.GroupMembership(g, a, NET, "kitchen"), 0.0)
    assert not q.join_group(conn, q.GroupMembership(g, a, NET, "kitchen"), 1.0)
    assert q.join_group(conn, q.GroupMembership(g, b, NET, "kitchen"), 0.0)
    assert {m.device_id for m in q.memberships(conn)} == {a, b}
    assert [m.device_id for m in q.memberships(conn, a)] == [a]
    assert q.leave_group(conn, g, a)
    assert not q.leave_group(conn, g, a)
