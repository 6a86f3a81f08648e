"""The audit log: who did what, when, with what outcome. Never a secret."""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from store._values import as_float, as_int, as_str
from store.records import AuditEntry


def append(conn: apsw.Connection, entries: Sequence[AuditEntry]) -> None:
    conn.executemany(
        "INSERT INTO audit_log (at, actor, action, target, outcome, status, client, detail) "
        "VALUES (?,?,?,?,?,?,?,?)",
        [(e.at, e.actor, e.action, e.target, e.outcome, e.status, e.client, e.detail) for e in entries],
    )


def query(
    conn: apsw.Connection,
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Newest first; `before_id` pages backwards."""
    where: list[str] = []
    args: list[object] = []
    for column, value in (("actor", actor), ("action", action), ("outcome", outcome)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    sql = "SELECT id, at, actor, action, target, outcome, status, client, detail FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
    return [
        AuditEntry(
            id=as_int(r[0]),
            at=as_float(r[1]),
            actor=as_str(r[2]),
            action=as_str(r[3]),
            target=as_str(r[4]),
            outcome=as_str(r[5]),
            status=None if r[6] is None else as_int(r[6]),
            client=as_str(r[7]),
            detail=as_str(r[8]),
        )
        for r in rows
    ]
