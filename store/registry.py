"""Queries for devices, networks, memberships and connections. Synchronous; callers own transactions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import apsw

from store._values import as_float, as_int, as_opt_float, as_opt_str, as_str
from store.records import Connection, Device, Network

DEVICE_COLUMNS = (
    "device_id, network_id, name, world_type, capabilities, hardware_spec, "
    "registered_at, updated_at, last_seen, status"
)


@dataclass(frozen=True)
class DeviceFilter:
    """Filters for listing devices; `scope` limits the result to devices in those networks."""

    network_id: str | None = None
    world_type: str | None = None
    status: str | None = None
    capability: str | None = None
    scope: Sequence[str] | None = None


def _device(row: Sequence[object], networks: tuple[str, ...] = ()) -> Device:
    return Device(
        device_id=as_str(row[0]),
        network_id=as_str(row[1]),
        name=as_str(row[2]),
        world_type=as_str(row[3]),
        capabilities=tuple(json.loads(as_str(row[4]))),
        hardware_spec=json.loads(as_str(row[5])),
        registered_at=as_float(row[6]),
        updated_at=as_float(row[7]),
        last_seen=as_float(row[8]),
        status=as_str(row[9]),
        networks=networks,
    )


def get_device(conn: apsw.Connection, device_id: str) -> Device | None:
    row = conn.execute(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    return None if row is None else _device(row, device_networks(conn, device_id))


def device_networks(conn: apsw.Connection, device_id: str) -> tuple[str, ...]:
    rows = conn.execute(
        "SELECT network_id FROM network_members WHERE device_id = ? ORDER BY network_id",
        (device_id,),
    )
    return tuple(as_str(r[0]) for r in rows)


def device_network_ids(conn: apsw.Connection, device_id: str) -> tuple[str, ...] | None:
    """The networks a device belongs to, in one query; None when there is no such device."""
    rows = conn.execute(
        "SELECT m.network_id FROM devices d LEFT JOIN network_members m ON m.device_id = d.device_id"
        " WHERE d.device_id = ? ORDER BY m.network_id",
        (device_id,),
    ).fetchall()
    if not rows:
        return None
    return tuple(as_str(r[0]) for r in rows if r[0] is not None)


def list_devices(conn: apsw.Connection, flt: DeviceFilter, *, after: str | None, limit: int) -> list[Device]:
    """Devices matching `flt`, ordered by id, starting after `after` (keyset pagination)."""
    where, args = _device_where(flt)
    if after is not None:
        where.append("d.device_id > ?")
        args.append(after)
    sql = f"SELECT {_prefixed('d')} FROM devices d"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY d.device_id LIMIT ?"
    args.append(limit)
    rows = list(conn.execute(sql, args))
    return [_device(r, device_networks(conn, as_str(r[0]))) for r in rows]


def count_devices_by_status(conn: apsw.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM devices GROUP BY status")
    return {as_str(s): as_int(n) for s, n in rows}


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in DEVICE_COLUMNS.split(","))


def _device_where(flt: DeviceFilter) -> tuple[list[str], list[object]]:
    where: list[str] = []
    args: list[object] = []
    if flt.network_id is not None:
        where.append("d.device_id IN (SELECT device_id FROM network_members WHERE network_id = ?)")
        args.append(flt.network_id)
    if flt.world_type is not None:
        where.append("d.world_type = ?")
        args.append(flt.world_type)
    if flt.status is not None:
        where.append("d.status = ?")
        args.append(flt.status)
    if flt.capability is not None:
        where.append("d.device_id IN (SELECT device_id FROM device_capabilities WHERE capability = ?)")
        args.append(flt.capability)
    if flt.scope is not None:
        marks = ",".join("?" * len(flt.scope)) or "NULL"
        where.append(f"d.device_id IN (SELECT device_id FROM network_members WHERE network_id IN ({marks}))")
        args.extend(flt.scope)
    return where, args


def insert_device(conn: apsw.Connection, d: Device) -> None:
    conn.execute(
        f"INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            d.device_id,
            d.network_id,
            d.name,
            d.world_type,
            json.dumps(list(d.capabilities)),
            json.dumps(d.hardware_spec, separators=(",", ":")),
            d.registered_at,
            d.updated_at,
            d.last_seen,
            d.status,
        ),
    )
    _set_capabilities(conn, d.device_id, d.capabilities)
    add_member(conn, d.network_id, d.device_id, d.registered_at)


def update_device(conn: apsw.Connection, d: Device) -> None:
    """Overwrite a device's mutable fields (registered_at is kept)."""
    conn.execute(
        "UPDATE devices SET network_id=?, name=?, world_type=?, capabilities=?, hardware_spec=?, "
        "updated_at=?, last_seen=?, status=? WHERE device_id=?",
        (
            d.network_id,
            d.name,
            d.world_type,
            json.dumps(list(d.capabilities)),
            json.dumps(d.hardware_spec, separators=(",", ":")),
            d.updated_at,
            d.last_seen,
            d.status,
            d.device_id,
        ),
    )
    _set_capabilities(conn, d.device_id, d.capabilities)
    add_member(conn, d.network_id, d.device_id, d.updated_at)


def _set_capabilities(conn: apsw.Connection, device_id: str, caps: Iterable[str]) -> None:
    conn.execute("DELETE FROM device_capabilities WHERE device_id = ?", (device_id,))
    conn.executemany(
        "INSERT INTO device_capabilities (capability, device_id) VALUES (?, ?)",
        [(c, device_id) for c in dict.fromkeys(caps)],
    )


def delete_device(conn: apsw.Connection, device_id: str) -> bool:
    conn.execute("UPDATE networks SET owner_device_id = NULL WHERE owner_device_id = ?", (device_id,))
    conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
    return conn.changes() > 0


def set_status(conn: apsw.Connection, device_id: str, status: str, last_seen: float) -> None:
    conn.execute(
        "UPDATE devices SET status = ?, last_seen = max(last_seen, ?) WHERE device_id = ?",
        (status, last_seen, device_id),
    )


def touch_devices(conn: apsw.Connection, seen: Iterable[tuple[str, float]]) -> None:
    """Write out last_seen times (never moving one backwards)."""
    conn.executemany(
        "UPDATE devices SET last_seen = max(last_seen, ?) WHERE device_id = ?",
        [(t, d) for d, t in seen],
    )


def add_member(conn: apsw.Connection, network_id: str, device_id: str, at: float) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO network_members (network_id, device_id, joined_at) VALUES (?,?,?)",
        (network_id, device_id, at),
    )


def remove_member(conn: apsw.Connection, network_id: str, device_id: str) -> bool:
    conn.execute(
        "DELETE FROM network_members WHERE network_id = ? AND device_id = ?",
        (network_id, device_id),
    )
    return conn.changes() > 0


# ---------------------------------------------------------------- networks


def _network(row: Sequence[object]) -> Network:
    return Network(
        network_id=as_str(row[0]),
        name=as_str(row[1]),
        created_at=as_float(row[2]),
        owner_device_id=as_opt_str(row[3]),
        device_count=as_int(row[4]),
    )


NETWORK_SELECT = (
    "SELECT n.network_id, n.name, n.created_at, n.owner_device_id, "
    "(SELECT count(*) FROM network_members m WHERE m.network_id = n.network_id) FROM networks n"
)


def get_network(conn: apsw.Connection, network_id: str) -> Network | None:
    row = conn.execute(f"{NETWORK_SELECT} WHERE n.network_id = ?", (network_id,)).fetchone()
    return None if row is None else _network(row)


def network_exists(conn: apsw.Connection, network_id: str) -> bool:
    """One key lookup (get_network also counts the members, which is O(members))."""
    return conn.execute("SELECT 1 FROM networks WHERE network_id = ?", (network_id,)).fetchone() is not None


def list_networks(
    conn: apsw.Connection, *, scope: Sequence[str] | None, after: str | None, limit: int
) -> list[Network]:
    where: list[str] = []
    args: list[object] = []
    if scope is not None:
        where.append(f"n.network_id IN ({','.join('?' * len(scope)) or 'NULL'})")
        args.extend(scope)
    if after is not None:
        where.append("n.network_id > ?")
        args.append(after)
    sql = NETWORK_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    rows = conn.execute(sql + " ORDER BY n.network_id LIMIT ?", [*args, limit])
    return [_network(r) for r in rows]


def insert_network(conn: apsw.Connection, n: Network) -> None:
    conn.execute(
        "INSERT INTO networks (network_id, name, created_at, owner_device_id) VALUES (?,?,?,?)",
        (n.network_id, n.name, n.created_at, n.owner_device_id),
    )


def update_network(conn: apsw.Connection, network_id: str, name: str, owner: str | None) -> bool:
    conn.execute(
        "UPDATE networks SET name = ?, owner_device_id = ? WHERE network_id = ?",
        (name, owner, network_id),
    )
    return conn.changes() > 0


def network_device_ids(conn: apsw.Connection, network_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT device_id FROM network_members WHERE network_id = ? ORDER BY device_id",
        (network_id,),
    )
    return [as_str(r[0]) for r in rows]


def primary_device_ids(conn: apsw.Connection, network_id: str) -> list[str]:
    rows = conn.execute("SELECT device_id FROM devices WHERE network_id = ?", (network_id,))
    return [as_str(r[0]) for r in rows]


def delete_network(conn: apsw.Connection, network_id: str) -> bool:
    conn.execute("DELETE FROM networks WHERE network_id = ?", (network_id,))
    return conn.changes() > 0


# ---------------------------------------------------------------- connections

CONNECTION_COLUMNS = (
    "connection_id, source_device_id, target_device_id, kind, established_at, last_heartbeat, "
    "status, closed_at"
)


def _connection(row: Sequence[object]) -> Connection:
    return Connection(
        connection_id=as_str(row[0]),
        source_device_id=as_str(row[1]),
        target_device_id=as_opt_str(row[2]),
        kind=as_str(row[3]),
        established_at=as_float(row[4]),
        last_heartbeat=as_float(row[5]),
        status=as_str(row[6]),
        closed_at=as_opt_float(row[7]),
    )


def get_connection(conn: apsw.Connection, connection_id: str) -> Connection | None:
    row = conn.execute(
        f"SELECT {CONNECTION_COLUMNS} FROM connections WHERE connection_id = ?", (connection_id,)
    ).fetchone()
    return None if row is None else _connection(row)


def list_connections(
    conn: apsw.Connection,
    *,
    device_id: str | None,
    network_id: str | None,
    status: str | None,
    scope: Sequence[str] | None,
    after: str | None,
    limit: int,
) -> list[Connection]:
    where: list[str] = []
    args: list[object] = []
    if device_id is not None:
        where.append("(source_device_id = ? OR target_device_id = ?)")
        args += [device_id, device_id]
    if network_id is not None:
        where.append("source_device_id IN (SELECT device_id FROM network_members WHERE network_id = ?)")
        args.append(network_id)
    if status is not None:
        where.append("status = ?")
        args.append(status)
    if scope is not None:
        marks = ",".join("?" * len(scope)) or "NULL"
        where.append(
            f"source_device_id IN (SELECT device_id FROM network_members WHERE network_id IN ({marks}))"
        )
        args.extend(scope)
    if after is not None:
        where.append("connection_id > ?")
        args.append(after)
    sql = f"SELECT {CONNECTION_COLUMNS} FROM connections"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY connection_id LIMIT ?", [*args, limit])
    return [_connection(r) for r in rows]


def insert_connection(conn: apsw.Connection, c: Connection) -> None:
    conn.execute(
        f"INSERT INTO connections ({CONNECTION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
        (
            c.connection_id,
            c.source_device_id,
            c.target_device_id,
            c.kind,
            c.established_at,
            c.last_heartbeat,
            c.status,
            c.closed_at,
        ),
    )


def heartbeat_connection(conn: apsw.Connection, connection_id: str, at: float) -> bool:
    conn.execute(
        "UPDATE connections SET last_heartbeat = max(last_heartbeat, ?) "
        "WHERE connection_id = ? AND status = 'open'",
        (at, connection_id),
    )
    return conn.changes() > 0


def close_connection(conn: apsw.Connection, connection_id: str, at: float) -> bool:
    conn.execute(
        "UPDATE connections SET status = 'closed', closed_at = ? WHERE connection_id = ? AND status = 'open'",
        (at, connection_id),
    )
    return conn.changes() > 0


def count_rows(conn: apsw.Connection, table: str) -> int:
    if table not in {"devices", "networks", "connections", "api_tokens", "audit_log"}:
        raise ValueError(table)
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return 0 if row is None else as_int(row[0])
