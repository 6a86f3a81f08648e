"""Migrations: from an empty database and from every earlier version to the latest."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from store import integrity_ok, latest_version, migrate, migrations, open_db, schema_version


def _schema(conn: apsw.Connection) -> list[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    )
    return [(str(t), str(n), " ".join(str(s).split())) for t, n, s in rows]


def _fresh(path: Path) -> apsw.Connection:
    conn = open_db(path)
    migrate(conn)
    return conn


def test_versions_are_contiguous_from_one() -> None:
    assert [m.version for m in migrations()] == list(range(1, latest_version() + 1))


def test_empty_database_migrates_to_latest(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "a.db")
    assert schema_version(conn) == 0
    assert migrate(conn) == list(range(1, latest_version() + 1))
    assert schema_version(conn) == latest_version()
    assert integrity_ok(conn) == (True, "ok")
    assert migrate(conn) == []
    recorded = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == list(range(1, latest_version() + 1))


@pytest.mark.parametrize("start", range(1, latest_version() + 1))
def test_every_earlier_version_reaches_the_same_schema(tmp_path: Path, start: int) -> None:
    reference = _schema(_fresh(tmp_path / "reference.db"))
    conn = open_db(tmp_path / "old.db")
    migrate(conn, target=start)
    assert schema_version(conn) == start
    _seed_v1(conn)
    migrate(conn)
    assert schema_version(conn) == latest_version()
    assert _schema(conn) == reference
    assert integrity_ok(conn) == (True, "ok")
    assert conn.execute("SELECT name FROM networks").fetchall() == [("seeded",)]


def _seed_v1(conn: apsw.Connection) -> None:
    """Rows every version since 1 can hold: they must survive every later migration."""
    with conn:
        conn.execute(
            "INSERT INTO networks VALUES ('11111111-1111-4111-8111-111111111111', 'seeded', 1.0, NULL)"
        )
        conn.execute(
            "INSERT INTO devices (device_id, network_id, world_type, registered_at, updated_at, last_seen, status) "
            "VALUES ('22222222-2222-4222-8222-222222222222', '11111111-1111-4111-8111-111111111111', 'physical', 1, 1, 1, 'online')"
        )


def test_newer_database_is_refused(tmp_path: Path) -> None:
    conn = _fresh(tmp_path / "a.db")
    conn.pragma("user_version", latest_version() + 1)
    with pytest.raises(RuntimeError, match="newer than this code"):
        migrate(conn)


def test_failed_migration_leaves_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import store._db as db

    steps = migrations()
    broken = [
        *steps,
        db.Migration(len(steps) + 1, "broken", "CREATE TABLE x (a); INSERT INTO nope VALUES (1);"),
    ]
    monkeypatch.setattr(db, "migrations", lambda: broken)
    conn = open_db(tmp_path / "a.db")
    with pytest.raises(apsw.SQLError):
        db.migrate(conn)
    assert schema_version(conn) == len(steps)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'x'").fetchall() == []


def test_pragmas(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "a.db")
    assert conn.pragma("journal_mode") == "wal"
    assert conn.pragma("foreign_keys") == 1
    assert conn.pragma("synchronous") == 2  # FULL
