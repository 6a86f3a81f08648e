"""The lock journal on the node's SQLite store: counters and leases commit with the store's group
commit (`synchronous=FULL`), so a reserved fencing counter is on disk before any grant under it."""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from node.locks._types import LockMode
from node.locks.journal import CounterReserved, JournalRecord, JournalSnapshot, LeaseEnded, LeaseRecord
from node.storage import Storage
from store import locks as rows


class SqliteLockJournal:
    """`LockJournal` backed by the `lock_counters` and `lock_leases` tables."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def load(self) -> JournalSnapshot:
        counters = self._storage.read(rows.counters)
        leases = [
            LeaseRecord(
                resource=r.resource,
                token=r.token,
                owner=r.owner,
                session=r.session,
                mode=LockMode(r.mode),
                priority=r.priority,
                lease_s=r.lease_s,
                expires_at_unix=r.expires_at_unix,
            )
            for r in self._storage.read(rows.leases)
        ]
        return JournalSnapshot(counters=counters, leases=leases)

    async def commit(self, records: Sequence[JournalRecord]) -> None:
        await self._storage.write(_apply, list(records))


def _apply(conn: apsw.Connection, records: list[JournalRecord]) -> None:
    for record in records:
        if isinstance(record, CounterReserved):
            rows.reserve(conn, record.resource, record.reserved_through)
        elif isinstance(record, LeaseRecord):
            rows.put_leases(
                conn,
                [
                    rows.LeaseRow(
                        record.resource,
                        record.token,
                        record.owner,
                        record.session,
                        record.mode.value,
                        record.priority,
                        record.lease_s,
                        record.expires_at_unix,
                    )
                ],
            )
        elif isinstance(record, LeaseEnded):
            rows.end_lease(conn, record.resource, record.token)
