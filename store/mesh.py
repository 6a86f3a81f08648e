"""The mesh's replicated registry records (migration 0005). Synchronous; callers own transactions.

A record row is `(kind, id, hlc, node, owner, deleted, body)`; `body` is the canonical JSON of the
replicated fields (see `device_fields` / `network_fields`). Applying a record from a peer writes
the row and *materializes* it into the registry tables (devices, networks, memberships,
capabilities) in the same transaction, with `mesh_apply_guard` held so the change triggers stay
silent. A device whose network has not arrived yet is kept with `applied = 0` and materialized
as soon as it can be.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import apsw

from store import registry as reg
from store._values import as_int, as_str
from store.records import Device


class Row(NamedTuple):
    """One record as stored (and as replicated)."""

    kind: str
    id: str
    hlc: int
    node: str
    owner: str
    deleted: bool
    body: str


Wins = Callable[[Row, Row | None], bool]
_COLUMNS = "kind, id, hlc, node, owner, deleted, body"


def _row(r: Sequence[Any]) -> Row:
    return Row(as_str(r[0]), as_str(r[1]), as_int(r[2]), as_str(r[3]), as_str(r[4]), bool(r[5]), as_str(r[6]))


# ---------------------------------------------------------------------- reads


def all_meta(conn: apsw.Connection) -> list[Row]:
    """Every record without its body (the in-memory index is built from this)."""
    rows = conn.execute("SELECT kind, id, hlc, node, owner, deleted, '' FROM mesh_records")
    return [_row(r) for r in rows]


def get_rows(conn: apsw.Connection, keys: Iterable[tuple[str, str]]) -> list[Row]:
    """The stored records of `keys` (missing ones are skipped)."""
    found = []
    for kind, id_ in keys:
        r = conn.execute(
            f"SELECT {_COLUMNS} FROM mesh_records WHERE kind = ? AND id = ?", (kind, id_)
        ).fetchone()
        if r is not None:
            found.append(_row(r))
    return found


def dirty(conn: apsw.Connection, limit: int) -> list[tuple[str, str, int]]:
    """Local changes not yet stamped: (kind, id, gen)."""
    rows = conn.execute("SELECT kind, id, gen FROM mesh_dirty ORDER BY kind DESC, id LIMIT ?", (limit,))
    return [(as_str(r[0]), as_str(r[1]), as_int(r[2])) for r in rows]


def device_fields(conn: apsw.Connection, device_id: str) -> dict[str, Any] | None:
    """The replicated fields of a device as the registry holds them now (None: no such device)."""
    device = reg.get_device(conn, device_id)
    if device is None:
        return None
    return {
        "device_id": device.device_id,
        "network_id": device.network_id,
        "networks": sorted(device.networks),
        "name": device.name,
        "world_type": device.world_type,
        "capabilities": list(device.capabilities),
        "hardware_spec": device.hardware_spec,
        "registered_at": device.registered_at,
        "updated_at": device.updated_at,
        "status": device.status,
    }


def network_fields(conn: apsw.Connection, network_id: str) -> dict[str, Any] | None:
    """The replicated fields of a network (None: no such network)."""
    r = conn.execute(
        "SELECT network_id, name, created_at, owner_device_id FROM networks WHERE network_id = ?",
        (network_id,),
    ).fetchone()
    if r is None:
        return None
    return {"network_id": r[0], "name": r[1], "created_at": r[2], "owner_device_id": r[3]}


def fields(conn: apsw.Connection, kind: str, id_: str) -> dict[str, Any] | None:
    """`device_fields` or `network_fields` by kind."""
    return device_fields(conn, id_) if kind == "device" else network_fields(conn, id_)


def queued_devices(conn: apsw.Connection) -> list[str]:
    """Devices that have messages in the offline queue."""
    rows = conn.execute("SELECT device_id FROM relay_queue_depth WHERE messages > 0 ORDER BY device_id")
    return [as_str(r[0]) for r in rows]


# ---------------------------------------------------------------------- local stamps


def stamp(conn: apsw.Connection, stamps: Sequence[tuple[Row, tuple[int, str] | None, int]]) -> list[Row]:
    """Store new local versions; returns those written.

    Each entry is (new row, the version it replaces or None, the dirty gen it covers). A row whose
    stored version changed meanwhile (a peer's record was applied) is skipped and stays dirty.
    """
    written = []
    for row, expected, gen in stamps:
        current = conn.execute(
            "SELECT hlc, node FROM mesh_records WHERE kind = ? AND id = ?", (row.kind, row.id)
        ).fetchone()
        if (None if current is None else (as_int(current[0]), as_str(current[1]))) != expected:
            continue
        _upsert(conn, row, applied=True)
        conn.execute("DELETE FROM mesh_dirty WHERE kind = ? AND id = ? AND gen = ?", (row.kind, row.id, gen))
        written.append(row)
    return written


def clear_dirty(conn: apsw.Connection, entries: Iterable[tuple[str, str, int]]) -> None:
    """Forget changes that need no new version (e.g. nothing replicated changed)."""
    conn.executemany("DELETE FROM mesh_dirty WHERE kind = ? AND id = ? AND gen = ?", list(entries))


def _upsert(conn: apsw.Connection, row: Row, *, applied: bool) -> None:
    conn.execute(
        f"INSERT INTO mesh_records ({_COLUMNS}, applied) VALUES (?,?,?,?,?,?,?,?) "
        "ON CONFLICT (kind, id) DO UPDATE SET hlc = excluded.hlc, node = excluded.node, "
        "owner = excluded.owner, deleted = excluded.deleted, body = excluded.body, "
        "applied = excluded.applied",
        (*row[:5], int(row.deleted), row.body, int(applied)),
    )


# ---------------------------------------------------------------------- records from peers


def apply(conn: apsw.Connection, rows: Sequence[Row], wins: Wins) -> list[Row]:
    """Apply peers' records that win over the stored ones; returns the winners, in apply order."""
    conn.execute("INSERT OR IGNORE INTO mesh_apply_guard (one) VALUES (1)")
    try:
        won = []
        for row in sorted(rows, key=lambda r: r.kind != "network"):  # networks before devices
            stored = get_rows(conn, [(row.kind, row.id)])
            if not wins(row, stored[0] if stored else None):
                continue
            _upsert(conn, row, applied=_materialize(conn, row))
            won.append(row)
        _retry_pending(conn)
    finally:
        conn.execute("DELETE FROM mesh_apply_guard")
    return won


def _retry_pending(conn: apsw.Connection) -> None:
    pending = [_row(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM mesh_records WHERE applied = 0")]
    for row in sorted(pending, key=lambda r: r.kind != "network"):
        if _materialize(conn, row):
            conn.execute("UPDATE mesh_records SET applied = 1 WHERE kind = ? AND id = ?", (row.kind, row.id))


def _materialize(conn: apsw.Connection, row: Row) -> bool:
    """Make the registry tables say what `row` says; False when it must wait (missing network)."""
    if row.kind == "network":
        return _materialize_network(conn, row)
    if row.deleted:
        reg.delete_device(conn, row.id)
        return True
    return _materialize_device(conn, row.id, json.loads(row.body))


def _materialize_network(conn: apsw.Connection, row: Row) -> bool:
    if row.deleted:
        if reg.primary_device_ids(conn, row.id):
            return False  # a device still lives here; its own record moves it, then this applies
        reg.delete_network(conn, row.id)
        return True
    body = json.loads(row.body)
    conn.execute(
        "INSERT INTO networks (network_id, name, created_at, owner_device_id) VALUES (?,?,?,?) "
        "ON CONFLICT (network_id) DO UPDATE SET name = excluded.name, created_at = excluded.created_at, "
        "owner_device_id = excluded.owner_device_id",
        (row.id, body["name"], body["created_at"], body["owner_device_id"]),
    )
    return True


def _materialize_device(conn: apsw.Connection, device_id: str, body: dict[str, Any]) -> bool:
    networks = list(dict.fromkeys([body["network_id"], *body["networks"]]))
    if not all(reg.network_exists(conn, n) for n in networks):
        return False
    existing = reg.get_device(conn, device_id)
    device = Device(
        device_id=device_id,
        network_id=body["network_id"],
        name=body["name"],
        world_type=body["world_type"],
        capabilities=tuple(body["capabilities"]),
        hardware_spec=body["hardware_spec"],
        registered_at=body["registered_at"],
        updated_at=body["updated_at"],
        last_seen=existing.last_seen if existing else body["updated_at"],
        status=body["status"],
    )
    if existing is None:
        reg.insert_device(conn, device)
    else:
        reg.update_device(conn, device)
        conn.execute(
            "UPDATE devices SET registered_at = ? WHERE device_id = ?", (device.registered_at, device_id)
        )
    keep = set(networks)
    for network_id in reg.device_networks(conn, device_id):
        if network_id not in keep:
            reg.remove_member(conn, network_id, device_id)
    for network_id in networks:
        reg.add_member(conn, network_id, device_id, device.updated_at)
    return True


def delete_records(conn: apsw.Connection, keys: Iterable[tuple[str, str]]) -> int:
    """Forget records (collected tombstones); returns how many went."""
    gone = 0
    for kind, id_ in keys:
        conn.execute("DELETE FROM mesh_records WHERE kind = ? AND id = ? AND deleted = 1", (kind, id_))
        gone += conn.changes()
    return gone


def pending_count(conn: apsw.Connection) -> int:
    """Records waiting to be materialized."""
    r = conn.execute("SELECT count(*) FROM mesh_records WHERE applied = 0").fetchone()
    return 0 if r is None else as_int(r[0])
