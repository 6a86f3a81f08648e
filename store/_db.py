"""Opening the database and running the numbered, forward-only migrations."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import apsw

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered schema step."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this code, in order; versions are 1, 2, 3 ... without gaps."""
    found = []
    for entry in resources.files("store.migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("store migrations are not numbered 1..N without gaps")
    return found


def latest_version() -> int:
    """The schema version this code writes."""
    return len(migrations())


def open_db(
    path: Path | str,
    *,
    busy_timeout_ms: int = 5000,
    synchronous: str = "FULL",
    autocheckpoint: bool = False,
    readonly: bool = False,
) -> apsw.Connection:
    """Open a connection with the node's pragmas (WAL, foreign keys, busy timeout).

    WAL auto-checkpoint is off by default: it adds ~3 ms spikes to commits (spike §6); the node
    checkpoints in the background instead.
    """
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = apsw.Connection(str(path), flags=flags)
    conn.set_busy_timeout(busy_timeout_ms)
    if not readonly:
        conn.pragma("journal_mode", "wal")
    conn.pragma("foreign_keys", True)
    conn.pragma("synchronous", synchronous)
    conn.wal_autocheckpoint(1000 if autocheckpoint else 0)
    return conn


def schema_version(conn: apsw.Connection) -> int:
    """The schema version of an open database (0 when empty)."""
    return int(conn.pragma("user_version"))


def migrate(conn: apsw.Connection, *, target: int | None = None) -> list[int]:
    """Apply every migration above the database's version (up to `target`); return those applied.

    Raises:
        RuntimeError: the database is newer than this code (a downgrade is never attempted).
    """
    steps = migrations()
    target = len(steps) if target is None else target
    current = schema_version(conn)
    if current > len(steps):
        raise RuntimeError(
            f"database schema version {current} is newer than this code ({len(steps)}); "
            "upgrade Asgard instead"
        )
    applied = []
    for step in steps[current:target]:
        with conn:  # one transaction per step: a failed step leaves the previous version intact
            conn.execute(step.sql)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (step.version, step.name, time.time()),
            )
            conn.pragma("user_version", step.version)
        applied.append(step.version)
    return applied


def integrity_ok(conn: apsw.Connection) -> tuple[bool, str]:
    """Run `PRAGMA integrity_check` and `foreign_key_check`; return (ok, first problem)."""
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    if rows != ["ok"]:
        return False, "; ".join(str(r) for r in rows[:5])
    bad = list(conn.execute("PRAGMA foreign_key_check"))
    if bad:
        return False, f"foreign key violations: {bad[:5]}"
    return True, "ok"
