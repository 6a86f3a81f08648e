"""The offline queue on the Trio side: group-committed inserts, batched deletes, TTL purge, drain reads.

Durability: every insert is one `Storage.write` job per received batch; the store's writer thread
commits whatever jobs have queued up in one transaction with `synchronous=FULL` (one fsync per
group), and `write` returns only after that commit. The sender's ACK is sent after it returns, so
an ACKed DURABLE message survives a crash of the process or the machine (WAL + fsync).

Deletes (DELIVERED) are not on anyone's critical path: they collect in a list and one task writes
each collection as one job. A row is counted as in flight by its session until its delete has
committed, so a drain never reads a delivered row again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from node.clock import WallClock
from node.relay.settings import QueueSettings
from node.router import Session
from node.storage import Storage
from store import queue as q
from wire.device import NackReason

RemovedHandler = Callable[[list[q.QueuedRef], int], None]  # (rows, NackReason)


@dataclass(slots=True)
class QueueStats:
    """Counters of the offline queue (rows, not frames: a broadcast stores one row per receiver)."""

    enqueue_jobs: int = 0
    deleted: int = 0
    delivered_unknown: int = 0  # DELIVERED for nothing this session was given
    expired: int = 0
    dropped_oldest: int = 0
    refused_full: int = 0


class DurableQueue:
    """Inserts, confirmations, purges and drain reads of the offline queue."""

    def __init__(self, storage: Storage, settings: QueueSettings, clock: WallClock) -> None:
        self._storage = storage
        self._clock = clock
        self.settings = settings
        self.stats = QueueStats()
        self._confirmed: list[tuple[str, bytes, int, Session, int]] = []
        self._wakeup = trio.Event()
        self._deleting = trio.Lock()  # a flush waits for the deletes already being written
        self._purging = trio.Lock()

    def apply_settings(self, settings: QueueSettings) -> None:
        """New limits, TTL, policy and purge interval apply from the next insert or purge."""
        self.settings = settings
        self._wakeup.set()

    def limits(self) -> q.QueueLimits:
        s = self.settings
        return q.QueueLimits(s.max_messages, s.max_bytes, s.ttl_s, s.overflow)

    async def enqueue(self, items: Sequence[q.EnqueueItem]) -> list[q.EnqueueResult]:
        """Store a received batch's DURABLE frames in one job; returns once they are on disk."""
        self.stats.enqueue_jobs += 1
        results = await self._storage.write(q.enqueue, items, self.limits(), self._clock.now())
        for result in results:
            self.stats.dropped_oldest += len(result.dropped)
            self.stats.refused_full += len(result.refused)
        return results

    def confirm(self, session: Session, key: tuple[bytes, int]) -> bool:
        """The receiver sent DELIVERED for `key` (source, message id); False if it was not given it."""
        seq = session.delivery.delivered(key)
        if seq is None:
            self.stats.delivered_unknown += 1
            return False
        self._confirmed.append((session.device_text, key[0], key[1], session, seq))
        self._wakeup.set()
        return True

    def pending(
        self, device_text: str, after_seq: int, *, max_rows: int, max_bytes: int
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """Unexpired rows for a receiver after its cursor (an inline read)."""
        return self._storage.read(
            q.pending, device_text, after_seq, self._clock.now(), max_rows=max_rows, max_bytes=max_bytes
        )

    def depth(self, device_text: str) -> q.QueueDepth:
        return self._storage.read(q.depth, device_text)

    async def run_deleter(self) -> None:
        """Write collected DELIVERED confirmations, one job per collection, until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write the confirmations collected so far (one job); returns when they are on disk."""
        async with self._deleting:
            if self._confirmed:
                await self._write_confirmed()

    async def _write_confirmed(self) -> None:
        batch, self._confirmed = self._confirmed, []
        try:
            self.stats.deleted += await self._storage.write(
                q.delete_delivered, [(d, s, m) for d, s, m, _, _ in batch]
            )
        finally:
            for _, _, _, session, seq in batch:
                session.delivery.deleted((seq,))
                if session.delivery.wants_drain():
                    session.outbox.wake()

    async def run_purger(self, on_removed: RemovedHandler) -> None:
        """Purge expired rows every `purge_interval_s` until cancelled."""
        while True:
            await trio.sleep(self.settings.purge_interval_s)
            await self.purge_expired(on_removed)

    async def purge_expired(self, on_removed: RemovedHandler) -> int:
        """Delete every expired row now (in commits of `purge_batch`); return how many."""
        async with self._purging:
            return await self._purge(on_removed)

    async def _purge(self, on_removed: RemovedHandler) -> int:
        total = 0
        while True:
            refs = await self._storage.write(
                q.purge_expired, self._clock.now(), limit=self.settings.purge_batch
            )
            self.stats.expired += len(refs)
            total += len(refs)
            if refs:
                on_removed(refs, NackReason.EXPIRED)
            if len(refs) < self.settings.purge_batch:
                return total

    async def purge_device(self, device_text: str) -> tuple[int, int]:
        """Delete a receiver's whole queue; returns (messages, bytes)."""
        return await self._storage.write(q.purge_device, device_text)
