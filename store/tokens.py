"""API token rows. Only a SHA-256 hash of each token is stored."""

from __future__ import annotations

import json
from collections.abc import Sequence

import apsw

from store._values import as_bytes, as_float, as_int, as_opt_float, as_opt_str, as_str
from store.records import Token

COLUMNS = (
    "token_id, token_hash, name, role, device_id, networks, created_at, expires_at, revoked_at, last_used_at"
)


def _token(row: Sequence[object]) -> Token:
    return Token(
        token_id=as_str(row[0]),
        token_hash=as_bytes(row[1]),
        name=as_str(row[2]),
        role=as_str(row[3]),
        device_id=as_opt_str(row[4]),
        networks=tuple(json.loads(as_str(row[5]))),
        created_at=as_float(row[6]),
        expires_at=as_opt_float(row[7]),
        revoked_at=as_opt_float(row[8]),
        last_used_at=as_opt_float(row[9]),
    )


def insert_token(conn: apsw.Connection, t: Token) -> None:
    conn.execute(
        f"INSERT INTO api_tokens ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            t.token_id,
            t.token_hash,
            t.name,
            t.role,
            t.device_id,
            json.dumps(list(t.networks)),
            t.created_at,
            t.expires_at,
            t.revoked_at,
            t.last_used_at,
        ),
    )


def token_by_hash(conn: apsw.Connection, token_hash: bytes) -> Token | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM api_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
    return None if row is None else _token(row)


def get_token(conn: apsw.Connection, token_id: str) -> Token | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM api_tokens WHERE token_id = ?", (token_id,)).fetchone()
    return None if row is None else _token(row)


def list_tokens(conn: apsw.Connection, *, include_revoked: bool = True) -> list[Token]:
    sql = f"SELECT {COLUMNS} FROM api_tokens"
    if not include_revoked:
        sql += " WHERE revoked_at IS NULL"
    return [_token(r) for r in conn.execute(sql + " ORDER BY created_at, token_id")]


def revoke_token(conn: apsw.Connection, token_id: str, at: float) -> bool:
    conn.execute(
        "UPDATE api_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
        (at, token_id),
    )
    return conn.changes() > 0


def touch_tokens(conn: apsw.Connection, used: Sequence[tuple[str, float]]) -> None:
    conn.executemany(
        "UPDATE api_tokens SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE token_id = ?",
        [(at, tid) for tid, at in used],
    )


def count_active_admins(conn: apsw.Connection, now: float) -> int:
    row = conn.execute(
        "SELECT count(*) FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > ?)",
        (now,),
    ).fetchone()
    return 0 if row is None else as_int(row[0])
