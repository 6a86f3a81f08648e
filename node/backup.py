"""Online backup and verified restore of the store (`asgard backup` / `asgard restore`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import apsw

from node.errors import InvalidInput, StoreError
from node.storage import StoreLock
from store import integrity_ok, latest_version, migrate, open_db, schema_version


def backup(db_path: Path, target: Path, *, force: bool = False) -> int:
    """Copy the live database to `target` with SQLite's online backup; returns its schema version.

    The copy is taken in one step inside one read transaction, so it is a consistent snapshot even
    while the node keeps writing (WAL readers never block the writer).
    """
    if not db_path.exists():
        raise StoreError(f"{db_path}: no database to back up")
    if target.exists() and not force:
        raise InvalidInput(f"{target} exists; pass --force to overwrite it")
    tmp = target.with_name(target.name + ".partial")
    tmp.unlink(missing_ok=True)
    src = open_db(db_path)
    try:
        dst = apsw.Connection(str(tmp))
        try:
            with dst.backup("main", src, "main") as step:
                step.step(-1)
            ok, problem = integrity_ok(dst)
            if not ok:
                raise StoreError(f"backup failed its integrity check: {problem}")
            version = schema_version(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # a backup is one self-contained file
        finally:
            dst.close()
    finally:
        src.close()
    _fsync(tmp)
    os.replace(tmp, target)
    return version


def verify(path: Path) -> int:
    """Check a backup file; returns its schema version.

    Raises:
        InvalidInput: not a database, fails integrity_check, or a schema this code cannot use.
    """
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            ok, problem = integrity_ok(conn)
            version = schema_version(conn)
        finally:
            conn.close()
    except apsw.Error as exc:
        raise InvalidInput(f"{path}: not a usable SQLite database ({exc})") from None
    if not ok:
        raise InvalidInput(f"{path}: integrity check failed: {problem}")
    if not 1 <= version <= latest_version():
        raise InvalidInput(
            f"{path}: schema version {version}; this Asgard reads versions 1 to {latest_version()}"
        )
    return version


def restore(db_path: Path, source: Path) -> Path | None:
    """Replace the store with a verified backup; the old files are kept aside (returned path).

    Raises:
        InvalidInput: the backup is unusable (nothing is replaced).
        StoreError: a node is running on this store.
    """
    verify(source)
    lock = StoreLock(db_path)
    lock.acquire()
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = db_path.with_name(db_path.name + ".restore")
        tmp.unlink(missing_ok=True)
        src = apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READONLY)
        dst = apsw.Connection(str(tmp))
        try:
            with dst.backup("main", src, "main") as step:
                step.step(-1)
        finally:
            dst.close()
            src.close()
        _fsync(tmp)
        kept = _set_aside(db_path)
        os.replace(tmp, db_path)
        conn = open_db(db_path)
        try:
            migrate(conn)
        finally:
            conn.close()
        return kept
    finally:
        lock.release()


def _set_aside(db_path: Path) -> Path | None:
    if not db_path.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = db_path.with_name(f"{db_path.name}.pre-restore-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        current = Path(str(db_path) + suffix)
        if current.exists():
            os.replace(current, Path(str(aside) + suffix))
    return aside


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
