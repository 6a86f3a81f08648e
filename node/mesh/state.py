"""Replicated registry records: hybrid logical clock, versions, last-writer-wins merge, digests.
Pure: the caller passes `now` (Unix seconds) wherever time matters.

Theory of operation
-------------------
Every replicated record (a device or a network) carries a **version** `(hlc, node)`: the hybrid
logical clock value at which node `node` last changed it. Versions are totally ordered: by `hlc`,
then by `node` (the node id string) as a deterministic tie-break. Merging keeps, per key
`(kind, id)`, the record with the greater version; a deletion is a record too (a **tombstone**,
`deleted=True`), so a delete wins over every older change and loses to every newer one. Because
the merge is "max under a total order", it is commutative, associative and idempotent: nodes that
have seen the same set of records hold the same state, whatever the order and repetition of
delivery (tests check this with Hypothesis).

**Hybrid logical clock** (Kulkarni et al., 2014): a 64-bit value `physical_ms << 16 | logical`.
A local change takes `max(last + 1, now_ms << 16)`; receiving a remote value takes
`max(last + 1, remote + 1, now_ms << 16)`, so a change made after seeing a record always gets a
greater version than that record (causality), while versions stay close to wall time. A remote
value more than `max_drift_s` ahead of this node's clock is not adopted (it still merges by its
version, it just does not drag this node's clock into the future).

**Ownership**: a device record names its `owner`, the node the device is attached to (where it
last opened a session, else where it was registered). The owner is part of the versioned record,
so when the same device registers on two nodes during a partition, both claims are versions and
the greater one wins everywhere after the partition heals.

**Digests** for anti-entropy: keys fall into `BUCKETS` buckets by hash; a bucket's digest is the
XOR of a 64-bit hash of every version in it, kept up to date incrementally (XOR is its own
inverse). Two nodes compare the digest vectors, exchange the versions of the differing buckets
only, and each pushes the records the other lacks or has older.

**Tombstones** are collected once their version's physical time is older than a horizon (the
leader's housekeeping order, or this node's own `tombstone_ttl_s` without a leader).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

LOGICAL_BITS = 16
BUCKETS = 64
DEVICE = "device"
NETWORK = "network"
KINDS = (NETWORK, DEVICE)  # apply order: a device needs its networks first

Key = tuple[str, str]  # (kind, id)


def hlc_ms(hlc: int) -> int:
    """The physical part of an HLC value, in Unix milliseconds."""
    return hlc >> LOGICAL_BITS


def hlc_of_time(seconds: float) -> int:
    """The smallest HLC value at wall time `seconds`."""
    return int(seconds * 1000) << LOGICAL_BITS


class HybridClock:
    """A node's hybrid logical clock (see the module docstring)."""

    __slots__ = ("ignored_ahead", "last", "max_drift_ms")

    def __init__(self, *, max_drift_s: float = 300.0, last: int = 0) -> None:
        self.last = last
        self.max_drift_ms = int(max_drift_s * 1000)
        self.ignored_ahead = 0

    def tick(self, now: float) -> int:
        """A new value for a local change at wall time `now`."""
        self.last = max(self.last + 1, hlc_of_time(now))
        return self.last

    def observe(self, remote: int, now: float) -> None:
        """Take in a value seen in a remote record (receive rule), unless it is too far ahead."""
        if hlc_ms(remote) - int(now * 1000) > self.max_drift_ms:
            self.ignored_ahead += 1
            return
        self.last = max(self.last + 1, remote + 1, hlc_of_time(now))


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """Total order of changes: HLC, then node id."""

    hlc: int
    node: str


@dataclass(frozen=True, slots=True)
class Meta:
    """A record without its body: what the index keeps in memory."""

    kind: str
    id: str
    hlc: int
    node: str
    owner: str
    deleted: bool

    @property
    def key(self) -> Key:
        return (self.kind, self.id)

    @property
    def version(self) -> Version:
        return Version(self.hlc, self.node)


@dataclass(frozen=True, slots=True)
class Record:
    """One replicated record; `body` is canonical JSON ('' for a tombstone)."""

    kind: str
    id: str
    hlc: int
    node: str
    owner: str
    deleted: bool
    body: str

    @property
    def key(self) -> Key:
        return (self.kind, self.id)

    @property
    def version(self) -> Version:
        return Version(self.hlc, self.node)

    @property
    def meta(self) -> Meta:
        return Meta(self.kind, self.id, self.hlc, self.node, self.owner, self.deleted)


def order_key(record: Record) -> tuple[int, str, bool, str, str]:
    """The merge order: the version, then (never needed between well-formed records, which a node
    stamps once per version) the content, so that `merge` is a total function."""
    return (record.hlc, record.node, record.deleted, record.owner, record.body)


def wins(incoming: Record | Meta, local: Record | Meta | None) -> bool:
    """True when `incoming` replaces `local` under last-writer-wins."""
    if local is None:
        return True
    if isinstance(incoming, Record) and isinstance(local, Record):
        return order_key(incoming) > order_key(local)
    return incoming.version > local.version


def merge(local: dict[Key, Record], incoming: dict[Key, Record]) -> dict[Key, Record]:
    """The state after receiving `incoming`: per key, the record that wins."""
    merged = dict(local)
    for key, record in incoming.items():
        if wins(record, merged.get(key)):
            merged[key] = record
    return merged


def canonical(body: dict[str, Any]) -> str:
    """The canonical JSON of a record body (sorted keys, no spaces): equal content, equal text."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------- local changes


@dataclass(frozen=True, slots=True)
class Stamp:
    """How a local change is recorded: its owner and whether it is a deletion."""

    owner: str
    deleted: bool


def stamp_for_change(
    kind: str, local: Meta | None, old_body: str | None, new_body: str | None, me: str
) -> Stamp | None:
    """Whether (and how) a change seen in the local registry becomes a new version.

    `new_body` None: the row is gone (a tombstone unless there was nothing to delete). An
    unchanged body is no change. A device owned by another node whose body changed only in
    `status` is not re-stamped here: its owner is the authority on its presence (this node's
    status tracker may time out a device it never hears from).
    """
    alive = local is not None and not local.deleted
    if new_body is None:
        return Stamp(local.owner, True) if alive and local is not None else None
    if alive and old_body == new_body:
        return None
    if alive and local is not None:
        if kind == DEVICE and local.owner != me and _only_status_differs(old_body, new_body):
            return None
        return Stamp(local.owner, False)
    return Stamp(me, False)


def _only_status_differs(old_body: str | None, new_body: str) -> bool:
    if not old_body:
        return False
    old, new = json.loads(old_body), json.loads(new_body)
    old.pop("status", None)
    new.pop("status", None)
    return bool(old == new)


# ---------------------------------------------------------------------- the index and digests


def bucket_of(kind: str, id_: str) -> int:
    """The digest bucket of a key."""
    return hashlib.sha256(f"{kind}\0{id_}".encode()).digest()[0] % BUCKETS


def version_hash(kind: str, id_: str, hlc: int, node: str) -> int:
    """A 64-bit hash of one version (the XOR term of its bucket's digest)."""
    raw = hashlib.sha256(f"{kind}\0{id_}\0{hlc}\0{node}".encode()).digest()
    return int.from_bytes(raw[:8], "big")


class VersionIndex:
    """Every record's metadata in memory, bucket digests, and device -> owner for routing."""

    def __init__(self) -> None:
        self.entries: dict[Key, Meta] = {}
        self.digests: list[int] = [0] * BUCKETS
        self.owners: dict[bytes, str] = {}  # live devices: 16-byte id -> owner node id
        self.owned_by: dict[str, int] = {}  # owner node id -> live devices it owns

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: Key) -> Meta | None:
        return self.entries.get(key)

    def put(self, meta: Meta) -> None:
        """Record `meta` as the current version of its key."""
        key = meta.key
        old = self.entries.get(key)
        bucket = bucket_of(*key)
        if old is not None:
            self.digests[bucket] ^= version_hash(old.kind, old.id, old.hlc, old.node)
            self._unown(old)
        self.digests[bucket] ^= version_hash(meta.kind, meta.id, meta.hlc, meta.node)
        self.entries[key] = meta
        if meta.kind == DEVICE and not meta.deleted:
            raw = _id_bytes(meta.id)
            if raw is not None:
                self.owners[raw] = meta.owner
                self.owned_by[meta.owner] = self.owned_by.get(meta.owner, 0) + 1

    def remove(self, key: Key) -> None:
        """Forget a key (a collected tombstone)."""
        old = self.entries.pop(key, None)
        if old is not None:
            self.digests[bucket_of(*key)] ^= version_hash(old.kind, old.id, old.hlc, old.node)
            self._unown(old)

    def _unown(self, old: Meta) -> None:
        if old.kind == DEVICE and not old.deleted:
            raw = _id_bytes(old.id)
            if raw is not None and self.owners.pop(raw, None) is not None:
                left = self.owned_by.get(old.owner, 1) - 1
                if left:
                    self.owned_by[old.owner] = left
                else:
                    self.owned_by.pop(old.owner, None)

    def versions_in(self, buckets: set[int]) -> dict[Key, Version]:
        """The versions of every key in `buckets`."""
        return {k: m.version for k, m in self.entries.items() if bucket_of(*k) in buckets}

    def tombstones_before(self, horizon_ms: int) -> list[Key]:
        """Tombstones whose version is older than `horizon_ms` (Unix milliseconds)."""
        return [k for k, m in self.entries.items() if m.deleted and hlc_ms(m.hlc) < horizon_ms]


def _id_bytes(text: str) -> bytes | None:
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        return None


def differing_buckets(mine: list[int], theirs: list[int]) -> set[int]:
    """Buckets whose digests differ (all of them when the vectors do not match in length)."""
    if len(mine) != len(theirs):
        return set(range(BUCKETS))
    return {i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b}


def to_push(mine: dict[Key, Version], theirs: dict[Key, Version]) -> list[Key]:
    """Keys of the differing buckets whose record the peer lacks or holds in an older version."""
    return sorted(k for k, v in mine.items() if (other := theirs.get(k)) is None or v > other)
