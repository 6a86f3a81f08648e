"""The relay's offline queue and multicast group memberships. Synchronous; callers own transactions.

A queued row is one DURABLE frame for one receiver. Rows are delivered in `seq` order, deleted when
the receiver answers DELIVERED, purged when they expire, and bounded per receiver in count and
bytes; `relay_queue_depth` holds each receiver's totals and changes in the same transaction as
the rows, so a limit check never counts rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import apsw

from store._values import as_bytes, as_float, as_int, as_str

OverflowPolicy = Literal["refuse-new", "drop-oldest"]
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def to_i64(message_id: int) -> int:
    """Fold a u64 message id into SQLite's signed 64-bit integer."""
    return message_id - _U64 if message_id > _I64_MAX else message_id


def from_i64(value: int) -> int:
    """Unfold a stored message id back to u64."""
    return value + _U64 if value < 0 else value


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Per-receiver bounds and what to do when a new message does not fit."""

    max_messages: int
    max_bytes: int
    ttl_s: float
    policy: OverflowPolicy


@dataclass(frozen=True, slots=True)
class EnqueueItem:
    """One DURABLE frame and its receivers: explicit `devices`, or every member of `network_id`.

    `exclude` (the sender) is never a receiver.
    """

    frame: bytes
    source: bytes
    message_id: int
    devices: tuple[str, ...] = ()
    network_id: str | None = None
    exclude: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedRef:
    """A row that left the queue without being delivered (dropped or expired), for the sender's NACK."""

    device_id: str
    source: bytes
    message_id: int
    seq: int


@dataclass(slots=True)
class EnqueueResult:
    """What happened to one EnqueueItem: (receiver, seq) stored, receivers refused, rows dropped."""

    queued: list[tuple[str, int]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    dropped: list[QueuedRef] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """One receiver's queue."""

    messages: int
    bytes: int
    oldest_at: float | None


@dataclass(frozen=True, slots=True)
class GroupMembership:
    """One device's membership of a multicast group."""

    group_id: bytes
    device_id: str
    network_id: str
    name: str


# ---------------------------------------------------------------------- enqueue


def enqueue(
    conn: apsw.Connection, items: Sequence[EnqueueItem], limits: QueueLimits, now: float
) -> list[EnqueueResult]:
    """Store every item for each of its receivers, applying the limits and the overflow policy."""
    depths: dict[str, list[int]] = {}
    results = []
    for item in items:
        result = EnqueueResult()
        for device_id in _receivers(conn, item):
            depth = depths.get(device_id)
            if depth is None:
                depth = depths[device_id] = _read_depth(conn, device_id)
            _enqueue_one(conn, item, device_id, depth, limits, now, result)
        results.append(result)
    _write_depths(conn, depths)
    return results


def _receivers(conn: apsw.Connection, item: EnqueueItem) -> list[str]:
    devices = list(item.devices)
    if item.network_id is not None:
        rows = conn.execute(
            "SELECT device_id FROM network_members WHERE network_id = ? ORDER BY device_id",
            (item.network_id,),
        )
        devices += [as_str(r[0]) for r in rows]
    return [d for d in dict.fromkeys(devices) if d != item.exclude]


def _enqueue_one(
    conn: apsw.Connection,
    item: EnqueueItem,
    device_id: str,
    depth: list[int],
    limits: QueueLimits,
    now: float,
    result: EnqueueResult,
) -> None:
    mid = to_i64(item.message_id)
    existing = conn.execute(
        "SELECT seq FROM relay_queue WHERE device_id = ? AND source = ? AND message_id = ?",
        (device_id, item.source, mid),
    ).fetchone()
    if existing is not None:  # a sender's retry: already stored once
        result.queued.append((device_id, as_int(existing[0])))
        return
    size = len(item.frame)
    if not _make_room(conn, device_id, depth, size, limits, result):
        result.refused.append(device_id)
        return
    conn.execute(
        "INSERT INTO relay_queue (device_id, source, message_id, enqueued_at, expires_at, frame) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (device_id, item.source, mid, now, now + limits.ttl_s, item.frame),
    )
    depth[0] += 1
    depth[1] += size
    result.queued.append((device_id, conn.last_insert_rowid()))


def _make_room(
    conn: apsw.Connection,
    device_id: str,
    depth: list[int],
    size: int,
    limits: QueueLimits,
    result: EnqueueResult,
) -> bool:
    """True when a frame of `size` bytes fits, after dropping the oldest rows if the policy says so."""
    if size > limits.max_bytes or limits.max_messages < 1:
        return False

    def fits() -> bool:
        return depth[0] + 1 <= limits.max_messages and depth[1] + size <= limits.max_bytes

    if fits():
        return True
    if limits.policy != "drop-oldest":
        return False
    oldest = conn.execute(
        "SELECT seq, source, message_id, length(frame) FROM relay_queue WHERE device_id = ? ORDER BY seq",
        (device_id,),
    )
    doomed = []
    for seq, source, mid, length in oldest:
        doomed.append(QueuedRef(device_id, as_bytes(source), from_i64(as_int(mid)), as_int(seq)))
        depth[0] -= 1
        depth[1] -= as_int(length)
        if fits():
            break
    oldest.close()  # finish the read before deleting from the same table
    conn.executemany("DELETE FROM relay_queue WHERE seq = ?", [(d.seq,) for d in doomed])
    result.dropped += doomed
    return fits()


def _read_depth(conn: apsw.Connection, device_id: str) -> list[int]:
    row = conn.execute(
        "SELECT messages, bytes FROM relay_queue_depth WHERE device_id = ?", (device_id,)
    ).fetchone()
    return [0, 0] if row is None else [as_int(row[0]), as_int(row[1])]


def _write_depths(conn: apsw.Connection, depths: dict[str, list[int]]) -> None:
    conn.executemany(
        "INSERT INTO relay_queue_depth (device_id, messages, bytes) VALUES (?, ?, ?) "
        "ON CONFLICT (device_id) DO UPDATE SET messages = excluded.messages, bytes = excluded.bytes",
        [(device_id, m, b) for device_id, (m, b) in depths.items()],
    )


def _subtract(conn: apsw.Connection, removed: dict[str, list[int]]) -> None:
    conn.executemany(
        "UPDATE relay_queue_depth SET messages = max(0, messages - ?), bytes = max(0, bytes - ?) "
        "WHERE device_id = ?",
        [(m, b, device_id) for device_id, (m, b) in removed.items()],
    )


# ---------------------------------------------------------------------- delivery and removal


def pending(
    conn: apsw.Connection, device_id: str, after_seq: int, now: float, *, max_rows: int, max_bytes: int
) -> tuple[list[tuple[int, bytes]], bool]:
    """Unexpired rows of a receiver with seq > `after_seq`, in order, within the budgets.

    Returns (rows, more): `more` is True when further rows exist beyond the budgets. The first row
    is returned even when it alone is larger than `max_bytes` (it must go out some time).
    """
    rows: list[tuple[int, bytes]] = []
    used = 0
    cursor = conn.execute(
        "SELECT seq, frame FROM relay_queue WHERE device_id = ? AND seq > ? AND expires_at > ? "
        "ORDER BY seq LIMIT ?",
        (device_id, after_seq, now, max_rows + 1),
    )
    try:
        for seq, frame in cursor:
            blob = as_bytes(frame)
            if len(rows) >= max_rows or (rows and used + len(blob) > max_bytes):
                return rows, True
            rows.append((as_int(seq), blob))
            used += len(blob)
    finally:
        cursor.close()
    return rows, False


def delete_delivered(conn: apsw.Connection, rows: Iterable[tuple[str, bytes, int]]) -> int:
    """Delete the rows named by (receiver, source, message id); return how many existed."""
    removed: dict[str, list[int]] = {}
    count = 0
    for device_id, source, message_id in rows:
        deleted = conn.execute(
            "DELETE FROM relay_queue WHERE device_id = ? AND source = ? AND message_id = ? "
            "RETURNING length(frame)",
            (device_id, source, to_i64(message_id)),
        ).fetchall()
        for (length,) in deleted:
            tally = removed.setdefault(device_id, [0, 0])
            tally[0] += 1
            tally[1] += as_int(length)
            count += 1
    _subtract(conn, removed)
    return count


def purge_expired(conn: apsw.Connection, now: float, *, limit: int) -> list[QueuedRef]:
    """Delete up to `limit` expired rows, oldest expiry first; return them (for NACK expired)."""
    rows = conn.execute(
        "DELETE FROM relay_queue WHERE seq IN "
        "(SELECT seq FROM relay_queue WHERE expires_at <= ? ORDER BY expires_at LIMIT ?) "
        "RETURNING seq, device_id, source, message_id, length(frame)",
        (now, limit),
    ).fetchall()
    removed: dict[str, list[int]] = {}
    refs = []
    for seq, device_id, source, mid, length in rows:
        ref = QueuedRef(as_str(device_id), as_bytes(source), from_i64(as_int(mid)), as_int(seq))
        refs.append(ref)
        tally = removed.setdefault(ref.device_id, [0, 0])
        tally[0] += 1
        tally[1] += as_int(length)
    _subtract(conn, removed)
    refs.sort(key=lambda r: r.seq)
    return refs


def purge_device(conn: apsw.Connection, device_id: str) -> tuple[int, int]:
    """Delete a receiver's whole queue; return (messages, bytes) removed."""
    before = _read_depth(conn, device_id)
    conn.execute("DELETE FROM relay_queue WHERE device_id = ?", (device_id,))
    conn.execute("DELETE FROM relay_queue_depth WHERE device_id = ?", (device_id,))
    return before[0], before[1]


# ---------------------------------------------------------------------- reads


def depth(conn: apsw.Connection, device_id: str) -> QueueDepth:
    """A receiver's queue length, size and oldest enqueue time."""
    messages, size = _read_depth(conn, device_id)
    row = conn.execute(
        "SELECT enqueued_at FROM relay_queue WHERE device_id = ? ORDER BY seq LIMIT 1", (device_id,)
    ).fetchone()
    return QueueDepth(messages, size, None if row is None else as_float(row[0]))


def totals(conn: apsw.Connection) -> tuple[int, int, int]:
    """(receivers with a non-empty queue, messages, bytes) over the whole node."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(messages), 0), coalesce(sum(bytes), 0) "
        "FROM relay_queue_depth WHERE messages > 0"
    ).fetchone()
    assert row is not None
    return as_int(row[0]), as_int(row[1]), as_int(row[2])


# ---------------------------------------------------------------------- groups


def join_group(conn: apsw.Connection, membership: GroupMembership, now: float) -> bool:
    """Add a membership; False when it existed already."""
    conn.execute(
        "INSERT OR IGNORE INTO relay_groups (group_id, device_id, network_id, name, joined_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (membership.group_id, membership.device_id, membership.network_id, membership.name, now),
    )
    return bool(conn.changes())


def leave_group(conn: apsw.Connection, group_id: bytes, device_id: str) -> bool:
    """Remove a membership; False when there was none."""
    conn.execute("DELETE FROM relay_groups WHERE group_id = ? AND device_id = ?", (group_id, device_id))
    return bool(conn.changes())


def memberships(conn: apsw.Connection, device_id: str | None = None) -> list[GroupMembership]:
    """Every group membership (of one device when given), ordered by group then device."""
    sql = "SELECT group_id, device_id, network_id, name FROM relay_groups"
    args: tuple[str, ...] = ()
    if device_id is not None:
        sql += " WHERE device_id = ?"
        args = (device_id,)
    rows = conn.execute(sql + " ORDER BY group_id, device_id", args)
    return [GroupMembership(as_bytes(g), as_str(d), as_str(n), as_str(m)) for g, d, n, m in rows]
