"""TURN users: derived long-term keys, never passwords."""

from __future__ import annotations

from dataclasses import dataclass

import apsw

from store._values import as_bytes, as_float, as_str


@dataclass(frozen=True, slots=True)
class TurnUser:
    username: str
    realm: str
    md5_key: bytes
    sha256_key: bytes
    userhash: bytes
    created_at: float


COLUMNS = "username, realm, md5_key, sha256_key, userhash, created_at"


def _user(row: tuple[object, ...]) -> TurnUser:
    return TurnUser(
        as_str(row[0]), as_str(row[1]), as_bytes(row[2]), as_bytes(row[3]), as_bytes(row[4]), as_float(row[5])
    )


def put(conn: apsw.Connection, user: TurnUser) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO turn_users ({COLUMNS}) VALUES (?,?,?,?,?,?)",
        (user.username, user.realm, user.md5_key, user.sha256_key, user.userhash, user.created_at),
    )


def get(conn: apsw.Connection, username: str, realm: str) -> TurnUser | None:
    row = conn.execute(
        f"SELECT {COLUMNS} FROM turn_users WHERE username = ? AND realm = ?", (username, realm)
    ).fetchone()
    return None if row is None else _user(row)


def by_userhash(conn: apsw.Connection, userhash: bytes, realm: str) -> TurnUser | None:
    row = conn.execute(
        f"SELECT {COLUMNS} FROM turn_users WHERE userhash = ? AND realm = ?", (userhash, realm)
    ).fetchone()
    return None if row is None else _user(row)


def list_users(conn: apsw.Connection) -> list[TurnUser]:
    return [_user(r) for r in conn.execute(f"SELECT {COLUMNS} FROM turn_users ORDER BY realm, username")]


def delete(conn: apsw.Connection, username: str, realm: str) -> bool:
    conn.execute("DELETE FROM turn_users WHERE username = ? AND realm = ?", (username, realm))
    return conn.changes() > 0
