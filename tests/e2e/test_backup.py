"""`asgard backup` while the node writes, `asgard restore` with the node stopped, and every refusal of
restore: a corrupt file, a newer schema, a running node."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

import apsw
import httpx
import pytest
import trio

from node.backup import backup as node_backup
from node.backup import restore
from node.errors import InvalidInput
from store import integrity_ok, latest_version, schema_version
from tests.e2e.conftest import Spawn
from tests.e2e.nodeproc import GRACE_S, NodeProcess, run_cli
from tests.e2e.streams import DeviceStream, create_network, stored_device_ids

WRITERS = 4
BACKUP_AFTER_ACKS = 150
STREAM_TIMEOUT_S = 60


def device_ids_in(path: Path) -> set[str]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {str(row[0]) for row in conn.execute("SELECT device_id FROM devices")}
    finally:
        conn.close()


def check_database(path: Path) -> None:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert integrity_ok(conn) == (True, "ok")
        assert schema_version(conn) == latest_version()
    finally:
        conn.close()


def fingerprint(db: Path) -> dict[str, str]:
    """Hashes of the store's files (database, WAL): equal before and after means untouched."""
    files = [Path(str(db) + suffix) for suffix in ("", "-wal")]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.exists()}


async def stop(node: NodeProcess) -> None:
    node.signal(signal.SIGTERM)
    assert await node.wait(GRACE_S + 10) == 0, node.stderr()


@pytest.mark.slow
async def test_backup_during_writes_restores_everything_acknowledged_before_it(
    spawn: Spawn, env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    node = await spawn(env)
    token = node.announcement["admin_token"]
    stream = DeviceStream(node.url, token, await create_network(node.url, token), target=BACKUP_AFTER_ACKS)
    backup = tmp_path / "backup.db"
    with trio.fail_after(STREAM_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(WRITERS):
                nursery.start_soon(stream.write)
            await stream.reached.wait()
            before = set(stream.acked)
            result = await run_cli("backup", str(backup), env=env, cwd=tmp_path)
            acked_during = len(stream.acked) - len(before)
            stream.stop = True
    assert result.returncode == 0, result.stderr
    assert f"schema version {latest_version()}" in result.stdout
    assert acked_during > 0, "the writes should have gone on while the backup ran"
    assert stream.unexpected == []

    check_database(backup)
    in_backup = device_ids_in(backup)
    assert before <= in_backup
    assert in_backup <= set(stream.acked)  # a consistent snapshot: nothing that was never acknowledged

    with pytest.raises(InvalidInput, match="exists; pass --force"):
        node_backup(data_dir / "asgard.db", backup)  # what `asgard backup` runs; refuses to overwrite

    await stop(node)
    restored = await run_cli("restore", str(backup), env=env, cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert "previous store kept at" in restored.stdout
    db = data_dir / "asgard.db"
    check_database(db)
    assert device_ids_in(db) == in_backup

    again = await spawn(env, name="restored")
    assert await stored_device_ids(again.url, token) == in_backup


@pytest.mark.slow
async def test_restore_refuses_a_running_node_a_corrupt_file_and_a_newer_schema(
    spawn: Spawn, env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    node = await spawn(env)
    token = node.announcement["admin_token"]
    stream = DeviceStream(node.url, token, await create_network(node.url, token), target=20)
    with trio.fail_after(STREAM_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.write)
            await stream.reached.wait()
            stream.stop = True
    good = tmp_path / "good.db"
    assert (await run_cli("backup", str(good), env=env, cwd=tmp_path)).returncode == 0

    running = await run_cli("restore", str(good), env=env, cwd=tmp_path)
    assert running.returncode == 1
    assert "the store is in use by another Asgard process" in running.stderr
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
        assert (await client.get("/readyz")).status_code == 200  # untouched, still serving
    await stop(node)
    db = data_dir / "asgard.db"
    untouched = fingerprint(db)

    cases = {
        "garbage": (tmp_path / "garbage.db", "not a usable SQLite database"),
        "truncated": (tmp_path / "truncated.db", "not a usable SQLite database"),
        "index": (tmp_path / "index.db", "integrity check failed"),
        "newer": (
            tmp_path / "newer.db",
            f"schema version {latest_version() + 1}; this Asgard reads versions",
        ),
        "missing": (tmp_path / "missing.db", "no such file"),
    }
    cases["garbage"][0].write_bytes(b"SQLite format 3\x00" + b"\xa5" * 8000)
    data = good.read_bytes()
    cases["truncated"][0].write_bytes(data[: len(data) // 2])
    corrupt_index(good, cases["index"][0])
    shutil.copy(good, cases["newer"][0])
    conn = apsw.Connection(str(cases["newer"][0]))
    conn.pragma("user_version", latest_version() + 1)
    conn.close()

    # Through the command for two of them (its exit code and message), in-process for the rest:
    # each `asgard` start costs seconds on a loaded machine.
    results: dict[str, str] = {}

    async def command(name: str) -> None:
        result = await run_cli("restore", str(cases[name][0]), env=env, cwd=tmp_path)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        results[name] = result.stderr

    async with trio.open_nursery() as nursery:
        for name in ("garbage", "newer"):
            nursery.start_soon(command, name)
    for name in ("truncated", "index", "missing"):
        with pytest.raises(InvalidInput) as refused:
            restore(db, cases[name][0])
        results[name] = refused.value.detail
    for name, (_, message) in cases.items():
        assert message in results[name], (name, results[name])
    assert fingerprint(db) == untouched, "a refused restore changed the store"
    assert not list(data_dir.glob("*.pre-restore-*")), "a refused restore set the store aside"


def corrupt_index(good: Path, target: Path) -> None:
    """A copy whose index no longer matches its table: readable, but integrity_check fails."""
    shutil.copy(good, target)
    conn = apsw.Connection(str(target))
    try:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_schema SET sql = 'CREATE INDEX devices_by_status ON devices (world_type, device_id)' "
            "WHERE name = 'devices_by_status'"
        )
    finally:
        conn.close()
