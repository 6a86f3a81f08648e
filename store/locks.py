"""Lock service rows: fencing counters and held leases."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import apsw

from store._values import as_float, as_int, as_str


@dataclass(frozen=True, slots=True)
class LeaseRow:
    resource: str
    token: int
    owner: str
    session: str
    mode: str
    priority: int
    lease_s: float
    expires_at_unix: float


def counters(conn: apsw.Connection) -> dict[str, int]:
    return {
        as_str(r): as_int(n) for r, n in conn.execute("SELECT resource, reserved_through FROM lock_counters")
    }


def leases(conn: apsw.Connection) -> list[LeaseRow]:
    rows = conn.execute(
        "SELECT resource, token, owner, session, mode, priority, lease_s, expires_at_unix FROM lock_leases "
        "ORDER BY resource, token"
    )
    return [
        LeaseRow(
            as_str(r[0]),
            as_int(r[1]),
            as_str(r[2]),
            as_str(r[3]),
            as_str(r[4]),
            as_int(r[5]),
            as_float(r[6]),
            as_float(r[7]),
        )
        for r in rows
    ]


def reserve(conn: apsw.Connection, resource: str, through: int) -> None:
    """Raise the counter of `resource` to `through` (never lowers it)."""
    conn.execute(
        "INSERT INTO lock_counters (resource, reserved_through) VALUES (?, ?) "
        "ON CONFLICT (resource) DO UPDATE "
        "SET reserved_through = max(reserved_through, excluded.reserved_through)",
        (resource, through),
    )


def put_leases(conn: apsw.Connection, rows: Iterable[LeaseRow]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO lock_leases "
        "(resource, token, owner, session, mode, priority, lease_s, expires_at_unix) "
        "VALUES (?,?,?,?,?,?,?,?)",
        [
            (r.resource, r.token, r.owner, r.session, r.mode, r.priority, r.lease_s, r.expires_at_unix)
            for r in rows
        ],
    )


def end_lease(conn: apsw.Connection, resource: str, token: int) -> None:
    conn.execute("DELETE FROM lock_leases WHERE resource = ? AND token = ?", (resource, token))
