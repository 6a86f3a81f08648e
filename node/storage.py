"""The node's async facade over the store: inline point reads, group-committed writes.

Theory of operation
-------------------
Measured here (spike §6): a point SELECT costs ~5 µs and one `trio.to_thread` hop ~100-135 µs, so
reads run inline on the Trio thread on their own connection. Writes must never block the Trio
thread on an fsync, so they go to one writer thread that owns the only write connection
(`synchronous=FULL`). The thread takes whatever has queued up, runs each job in a SAVEPOINT inside
one transaction, commits once (one fsync per batch: group commit) and hands all the outcomes back
to Trio in one `run_sync_soon` call. A job that raises rolls back to its own savepoint only; the
rest of the batch still commits. A caller's `await write(...)` returns only once its change is on
disk, and a write that has been handed over is never withdrawn: the wait for it is shielded from
cancellation, so a caller is never told "failed" about something that committed.
WAL auto-checkpoint is off (it adds ~3 ms commit spikes); a Trio task checkpoints in a worker thread
on its own connection while writes continue.
"""

from __future__ import annotations

import fcntl
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import apsw
import outcome
import trio

from node.config import StoreSettings
from node.errors import NodeError, StoreError
from store import integrity_ok, migrate, open_db

T = TypeVar("T")
P = ParamSpec("P")

_STOP = object()


@dataclass(eq=False)
class _Job(Generic[T]):
    fn: Callable[..., T]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    done: trio.Event = field(default_factory=trio.Event)
    result: outcome.Outcome[T] | None = None


@dataclass
class StorageStats:
    """Counters for /api/v1/admin/stats and /metrics."""

    writes: int = 0
    batches: int = 0
    largest_batch: int = 0
    write_errors: int = 0
    checkpoints: int = 0
    queued: int = 0


class Storage:
    """Inline reads, group-committed writes. Create it with `open_storage`."""

    def __init__(self, path: Path, settings: StoreSettings) -> None:
        self.path = path
        self._settings = settings
        self._reader = open_db(path, busy_timeout_ms=settings.busy_timeout_ms, synchronous="FULL")
        self._writer_conn: apsw.Connection | None = None
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots = trio.Semaphore(settings.writer_queue_max)
        self._token = trio.lowlevel.current_trio_token()
        self._thread: threading.Thread | None = None
        self._writes_since_checkpoint = 0
        self.stats = StorageStats()

    # ------------------------------------------------------------------ reads
    def read(self, fn: Callable[Concatenate[apsw.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(conn, *args, **kwargs)` inline in one read transaction (a consistent snapshot)."""
        conn = self._reader
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn, *args, **kwargs)
            finally:
                conn.execute("COMMIT")
        except apsw.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    def read_statement(
        self, fn: Callable[Concatenate[apsw.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, *args, **kwargs)` inline without an explicit transaction: for an `fn`
        that runs exactly one statement, which SQLite reads from one snapshot by itself (no
        BEGIN and COMMIT round trips: for reads on a hot path)."""
        try:
            return fn(self._reader, *args, **kwargs)
        except apsw.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    # ------------------------------------------------------------------ writes
    async def write(
        self, fn: Callable[Concatenate[apsw.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, *args, **kwargs)` on the writer thread; return once it is committed to disk.

        Raises:
            NodeError: whatever `fn` raised (its changes are rolled back, the batch's are not).
            StoreError: the store failed.
        """
        if self._thread is None:
            raise StoreError("storage is closed")
        async with self._slots:
            job: _Job[T] = _Job(fn, args, kwargs)
            self.stats.queued += 1
            self._jobs.put(job)
            with trio.CancelScope(shield=True):
                await job.done.wait()
        assert job.result is not None
        return job.result.unwrap()

    def _complete(self, batch: list[_Job[Any]]) -> None:
        for job in batch:
            job.done.set()
        self.stats.queued -= len(batch)

    def _writer_main(self) -> None:
        conn = self._writer_conn
        assert conn is not None
        while True:
            first = self._jobs.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self._settings.writer_batch_max:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._jobs.put(_STOP)
                    break
                batch.append(nxt)
            self._run_batch(conn, batch)
            self._token.run_sync_soon(self._complete, batch)

    def _run_batch(self, conn: apsw.Connection, batch: list[_Job[Any]]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                job.result = self._run_job(conn, job)
            conn.execute("COMMIT")
        except apsw.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StoreError(f"store commit failed: {exc}")
            for job in batch:
                job.result = outcome.Error(failure)
            self.stats.write_errors += len(batch)
            return
        self.stats.writes += len(batch)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self._writes_since_checkpoint += len(batch)

    @staticmethod
    def _run_job(conn: apsw.Connection, job: _Job[Any]) -> outcome.Outcome[Any]:
        conn.execute("SAVEPOINT job")
        try:
            value = job.fn(conn, *job.args, **job.kwargs)
        except NodeError as exc:
            conn.execute("ROLLBACK TO job; RELEASE job")
            return outcome.Error(exc)
        except apsw.ConstraintError as exc:
            conn.execute("ROLLBACK TO job; RELEASE job")
            return outcome.Error(StoreError(f"constraint failed: {exc}"))
        except Exception as exc:  # a bug in fn: report it to the caller, keep the batch
            conn.execute("ROLLBACK TO job; RELEASE job")
            return outcome.Error(exc)
        conn.execute("RELEASE job")
        return outcome.Value(value)

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        self._writer_conn = open_db(
            self.path, busy_timeout_ms=self._settings.busy_timeout_ms, synchronous="FULL"
        )
        self._thread = threading.Thread(target=self._writer_main, name="asgard-store-writer")
        self._thread.start()

    async def _stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            await trio.to_thread.run_sync(thread.join)
        if self._writer_conn is not None:
            self._writer_conn.close()
        self._reader.close()

    async def checkpoint_forever(self) -> None:
        """Checkpoint the WAL in a worker thread whenever writes have happened."""
        conn = open_db(self.path, busy_timeout_ms=self._settings.busy_timeout_ms)
        try:
            while True:
                await trio.sleep(self._settings.checkpoint_interval_s)
                if self._writes_since_checkpoint:
                    await self.checkpoint(conn)
        finally:
            conn.close()

    async def checkpoint(self, conn: apsw.Connection | None = None) -> None:
        """Copy the WAL into the database file (PASSIVE: never blocks the writer)."""
        self._writes_since_checkpoint = 0
        own = conn is None
        conn = conn or open_db(self.path, busy_timeout_ms=self._settings.busy_timeout_ms)
        try:
            await trio.to_thread.run_sync(conn.wal_checkpoint, None, apsw.SQLITE_CHECKPOINT_PASSIVE)
        finally:
            if own:
                conn.close()
        self.stats.checkpoints += 1

    def size_bytes(self) -> int:
        """Database plus WAL size on disk."""
        total = 0
        for suffix in ("", "-wal"):
            with suppress(FileNotFoundError):
                total += Path(str(self.path) + suffix).stat().st_size
        return total


def prepare_database(path: Path, settings: StoreSettings) -> list[int]:
    """Create the directory and database if needed and run pending migrations (synchronous).

    Raises:
        StoreError: the file is not a usable Asgard database.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = open_db(path, busy_timeout_ms=settings.busy_timeout_ms)
        try:
            applied = migrate(conn)
            ok, problem = integrity_ok(conn)
            if not ok:
                raise StoreError(f"{path}: integrity check failed: {problem}")
            return applied
        finally:
            conn.close()
    except (apsw.Error, RuntimeError) as exc:
        raise StoreError(f"{path}: {exc}") from exc


@asynccontextmanager
async def open_storage(path: Path, settings: StoreSettings) -> AsyncIterator[Storage]:
    """Migrate, start the writer thread and the checkpointer; stop both on exit."""
    await trio.to_thread.run_sync(prepare_database, path, settings)
    storage = Storage(path, settings)
    storage._start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.checkpoint_forever, name="store-checkpoint")
            try:
                yield storage
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Shielded: a node cancelled from outside must still let the writer finish the commits it
        # has (bounded by the queue) and close every connection.
        with trio.CancelScope(shield=True):
            await storage._stop()


class StoreLock:
    """An exclusive advisory lock next to the database: one node per store, and no restore under a
    running node."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises StoreError when another process holds the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.path}: the store is in use by another Asgard process") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
