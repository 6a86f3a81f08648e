"""The async storage facade: group commit, per-job rollback, reads see commits, error mapping."""

from __future__ import annotations

import threading
from pathlib import Path

import apsw
import pytest
import trio
import trio.testing

from node.config import StoreSettings
from node.errors import Conflict, StoreError
from node.storage import open_storage
from store import meta


def _put(conn: apsw.Connection, key: str, value: str) -> str:
    meta.put(conn, key, value)
    return value


def _put_then_fail(conn: apsw.Connection, key: str) -> None:
    meta.put(conn, key, "should vanish")
    raise Conflict("refused on purpose")


async def test_write_then_read_inline(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "s.db", StoreSettings()) as storage:
        assert await storage.write(_put, "a", "1") == "1"
        assert storage.read(meta.get, "a") == "1"


async def test_concurrent_writes_are_group_committed(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "s.db", StoreSettings()) as storage:
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(storage.write, _put, f"k{i}", str(i))
        assert all(storage.read(meta.get, f"k{i}") == str(i) for i in range(200))
        assert storage.stats.writes == 200
        assert storage.stats.batches < 200
        assert storage.stats.largest_batch > 1


async def test_failing_job_rolls_back_alone(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "s.db", StoreSettings()) as storage:
        results: dict[str, object] = {}

        async def attempt(name: str, job: object) -> None:
            try:
                results[name] = await job  # type: ignore[misc]
            except Conflict as exc:
                results[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "good1", storage.write(_put, "g1", "x"))
            nursery.start_soon(attempt, "bad", storage.write(_put_then_fail, "b"))
            nursery.start_soon(attempt, "good2", storage.write(_put, "g2", "y"))
        assert isinstance(results["bad"], Conflict)
        assert storage.read(meta.get, "b") is None
        assert storage.read(meta.get, "g1") == "x"
        assert storage.read(meta.get, "g2") == "y"


async def test_constraint_violation_maps_to_store_error(tmp_path: Path) -> None:
    def dup(conn: apsw.Connection) -> None:
        conn.execute("INSERT INTO meta VALUES ('k', 'v')")
        conn.execute("INSERT INTO meta VALUES ('k', 'v')")

    async with open_storage(tmp_path / "s.db", StoreSettings()) as storage:
        with pytest.raises(StoreError, match="constraint"):
            await storage.write(dup)
        assert storage.read(meta.get, "k") is None


async def test_write_cancelled_before_handover_does_nothing(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "s.db", StoreSettings()) as storage:
        with trio.CancelScope() as scope:
            scope.cancel()
            await storage.write(_put, "c", "never")
        assert storage.read(meta.get, "c") is None


async def test_write_handed_over_is_not_withdrawn_by_cancellation(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "s.db", StoreSettings()) as storage:
        returned: list[str] = []

        async def writer(scope_box: list[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                scope_box.append(scope)
                returned.append(await storage.write(_put, "c", "committed"))

        box: list[trio.CancelScope] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, box)
            await trio.testing.wait_all_tasks_blocked()
            box[0].cancel()
        assert returned == ["committed"]
        assert storage.read(meta.get, "c") == "committed"


async def test_committed_data_survives_reopen_and_checkpoint(tmp_path: Path) -> None:
    settings = StoreSettings()
    async with open_storage(tmp_path / "s.db", settings) as storage:
        await storage.write(_put, "p", "persist")
        await storage.checkpoint()
        assert storage.stats.checkpoints == 1
        assert Path(str(storage.path) + "-wal").stat().st_size > 0
    async with open_storage(tmp_path / "s.db", settings) as storage:
        assert storage.read(meta.get, "p") == "persist"


def _count_rows(conn: apsw.Connection, table: str) -> int:
    (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(count)


async def test_read_statement_sees_commits_and_maps_errors(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "s.db", StoreSettings()) as storage:
        before = storage.read_statement(_count_rows, "meta")
        await storage.write(_put, "rs", "1")
        assert storage.read_statement(meta.get, "rs") == "1"
        assert storage.read_statement(_count_rows, "meta") == before + 1
        with pytest.raises(StoreError, match="no such table"):
            storage.read_statement(_count_rows, "no_such_table")
        assert storage.read(meta.get, "rs") == "1"  # the reader is left usable for transactions


async def test_write_after_close_is_refused(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "s.db", StoreSettings()) as storage:
        pass
    with pytest.raises(StoreError, match="closed"):
        await storage.write(_put, "x", "y")


async def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        async with open_storage(path, StoreSettings()):
            pass


async def test_a_cancelled_owner_still_stops_the_writer_and_closes_the_store(tmp_path: Path) -> None:
    threads_before = {t.name for t in threading.enumerate()}
    with trio.CancelScope() as scope:
        async with open_storage(tmp_path / "s.db", StoreSettings()) as storage:
            await storage.write(_put, "a", "1")
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(StoreError, match="closed"):
        storage.read(meta.get, "a")
    leftover = {t.name for t in threading.enumerate()} - threads_before
    assert not [name for name in leftover if "store" in name or "writer" in name], leftover
