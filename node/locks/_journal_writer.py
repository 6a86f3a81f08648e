"""Group commit of journal records: one writer task, coalesced records, waitable batches."""

from __future__ import annotations

import trio

from node.errors import NodeError, Unavailable
from node.locks.journal import CounterReserved, JournalRecord, LockJournal


class Batch:
    """The records that go to the journal in one commit; wait on it to know they are durable."""

    def __init__(self, urgent: trio.Event | None = None) -> None:
        self.done = trio.Event()
        self.error: NodeError | None = None
        self._urgent = urgent

    async def wait(self) -> None:
        """Return once committed (someone waiting makes the writer commit at once)."""
        if self._urgent is not None and not self.done.is_set():
            self._urgent.set()
        await self.done.wait()
        if self.error is not None:
            raise self.error


def _key(record: JournalRecord) -> tuple[str, str, int]:
    if isinstance(record, CounterReserved):
        return ("counter", record.resource, 0)
    return ("lease", record.resource, record.token)


class JournalWriter:
    """Coalesces records per key (latest wins) and commits them in batches from one task."""

    def __init__(self, journal: LockJournal, timeout_s: float, retry_s: float, delay_s: float = 0.0) -> None:
        self._journal = journal
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._delay_s = delay_s
        self._pending: dict[tuple[str, str, int], JournalRecord] = {}
        self._urgent = trio.Event()
        self._batch = Batch(self._urgent)
        self._wakeup = trio.Event()
        self._in_flight: Batch | None = None
        self.commits = 0
        self.failures = 0

    def add(self, record: JournalRecord) -> Batch:
        """Queue `record`; the returned batch carries it."""
        key = _key(record)
        old = self._pending.get(key)
        if (
            isinstance(old, CounterReserved)
            and isinstance(record, CounterReserved)
            and old.reserved_through >= record.reserved_through
        ):
            return self._batch
        self._pending[key] = record
        self._wakeup.set()
        return self._batch

    def backlog(self) -> int:
        return len(self._pending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: commit whatever is pending, one batch at a time, forever."""
        task_status.started()
        while True:
            await self._wakeup.wait()
            if self._delay_s > 0 and not self._urgent.is_set():
                # Nobody waits for these records yet: let a few more join the batch.
                with trio.move_on_after(self._delay_s):
                    await self._urgent.wait()
            self._wakeup, self._urgent = trio.Event(), trio.Event()
            batch, records = self._batch, self._pending
            self._batch, self._pending = Batch(self._urgent), {}
            self._in_flight = batch
            try:
                with trio.fail_after(self._timeout_s):
                    await self._journal.commit(list(records.values()))
            except (NodeError, trio.TooSlowError) as exc:
                self.failures += 1
                self._requeue(records)
                batch.error = exc if isinstance(exc, NodeError) else Unavailable("journal timeout")
                batch.done.set()
                await trio.sleep(self._retry_s)
                continue
            self.commits += 1
            batch.done.set()

    def _requeue(self, failed: dict[tuple[str, str, int], JournalRecord]) -> None:
        merged = dict(failed)
        merged.update(self._pending)  # newer records for the same key win
        self._pending = merged
        self._wakeup.set()

    def close(self) -> None:
        """The writer is gone: every batch not committed fails (nobody may wait forever)."""
        for batch in (self._in_flight, self._batch):
            if batch is not None and not batch.done.is_set():
                batch.error = Unavailable("the lock journal stopped")
                batch.done.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (raises if that commit fails)."""
        if self._pending:
            await self._batch.wait()
