"""Persistence of the lock service behind a small protocol, and an in-memory implementation.

What a journal must make durable, and when (the contract `LockService` relies on):
  * `CounterReserved(resource, reserved_through)`: every fencing token ever returned to a caller is
    <= the reserved value of its resource. The service returns a grant only after the commit that
    carries a reservation covering its token has returned, and it reserves tokens in blocks
    (`token_reserve_block`) ahead of need, so most grants wait for nothing. After a crash, tokens
    continue above the reservation: they may skip values, never repeat or go back.
  * `LeaseRecord` / `LeaseEnded`: the held leases, written behind (grouped with whatever else is
    pending) unless `journal_write_through` is set. A crash can lose the last few lease changes:
    a lost grant means the lock is free after the restart (its holder's token is then stale and
    fenced off), a lost release means the lock stays held until its lease expires.
`commit(records)` applies the records in order, atomically, and returns only when they are durable.
Every record is idempotent (upsert, delete, max), so a failed batch may be retried as a whole,
merged with newer records. Lease deadlines are wall-clock Unix seconds, so leases resume with
their remaining time after a restart (or expire if it has passed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from node.locks._types import LockMode


@dataclass(frozen=True, slots=True)
class CounterReserved:
    """Every token of `resource` ever handed out is <= `reserved_through`."""

    resource: str
    reserved_through: int


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A held lease (insert or replace by (resource, token))."""

    resource: str
    token: int
    owner: str
    session: str
    mode: LockMode
    priority: int
    lease_s: float
    expires_at_unix: float


@dataclass(frozen=True, slots=True)
class LeaseEnded:
    """The lease (resource, token) is no longer held (delete; no-op when absent)."""

    resource: str
    token: int


JournalRecord = CounterReserved | LeaseRecord | LeaseEnded


@dataclass(frozen=True, slots=True)
class JournalSnapshot:
    """What `load` returns at start-up."""

    counters: Mapping[str, int] = field(default_factory=dict)
    leases: Sequence[LeaseRecord] = ()


class LockJournal(Protocol):
    """Durable storage of fencing counters and held leases."""

    async def load(self) -> JournalSnapshot:
        """Everything committed so far."""
        ...

    async def commit(self, records: Sequence[JournalRecord]) -> None:
        """Apply `records` in order, atomically; return once durable; raise NodeError on failure."""
        ...


def apply_records(
    counters: dict[str, int],
    leases: dict[tuple[str, int], LeaseRecord],
    records: Sequence[JournalRecord],
) -> None:
    """The reference semantics of `commit`, for implementations and tests."""
    for record in records:
        if isinstance(record, CounterReserved):
            old = counters.get(record.resource, 0)
            counters[record.resource] = max(old, record.reserved_through)
        elif isinstance(record, LeaseRecord):
            leases[(record.resource, record.token)] = record
        else:
            leases.pop((record.resource, record.token), None)


class MemoryLockJournal:
    """A journal in memory: durable for the life of the object (tests, single-shot runs).

    Outlives the `LockService` that uses it, so a new service on the same object is a restart.
    """

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.leases: dict[tuple[str, int], LeaseRecord] = {}
        self.commits = 0
        self.records_committed = 0

    async def load(self) -> JournalSnapshot:
        return JournalSnapshot(dict(self.counters), tuple(self.leases.values()))

    async def commit(self, records: Sequence[JournalRecord]) -> None:
        apply_records(self.counters, self.leases, records)
        self.commits += 1
        self.records_committed += len(records)
