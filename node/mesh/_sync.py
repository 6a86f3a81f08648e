"""Registry replication on the Trio side: stamping local changes, applying peers' records,
anti-entropy, tombstone collection. The rules are in `state`; the rows in `store.mesh`.

One task (`run`) does every store write of the sync, in order: local changes (noted in
`mesh_dirty` by triggers) are stamped at least every `poll_interval_s` (at once after a claim),
messages from peers are handled in arrival order (a link's handler only queues them; their
credits go back when they are done, so a fast peer cannot queue more than its window), and the
periodic work (digests to every link, collecting old tombstones) runs between them.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import apsw
import trio

from node.clock import WallClock
from node.errors import StoreError
from node.logs import event, logger
from node.mesh._links import Link
from node.mesh._peer_model import (
    Digest,
    Housekeeping,
    PeerMessage,
    RecordData,
    Records,
    VersionData,
    Versions,
)
from node.mesh.settings import SyncSettings
from node.mesh.state import (
    DEVICE,
    KINDS,
    HybridClock,
    Meta,
    Record,
    Stamp,
    Version,
    VersionIndex,
    canonical,
    differing_buckets,
    hlc_ms,
    stamp_for_change,
    to_push,
    wins,
)
from node.storage import Storage
from store import mesh as rows_db
from store.mesh import Row

log = logger("mesh")

VERSIONS_PER_MESSAGE = 2048
_DEVICE_KEYS = frozenset(
    ("network_id", "networks", "name", "world_type", "capabilities", "hardware_spec", "registered_at",
     "updated_at", "status")
)  # fmt: skip
_NETWORK_KEYS = frozenset(("name", "created_at", "owner_device_id"))
_NO_GEN = -1  # a claim without a dirty row: nothing to clear


@dataclass(slots=True)
class SyncStats:
    """Counters of the registry sync."""

    stamped: int = 0
    applied: int = 0
    stale: int = 0  # records from peers that lost to what this node holds
    invalid: int = 0
    pushed: int = 0  # records sent by anti-entropy
    digests_sent: int = 0
    collected: int = 0  # tombstones forgotten
    apply_errors: int = 0


class Sync:
    """The replicated registry of one node (see the module docstring)."""

    def __init__(
        self,
        me: str,
        storage: Storage,
        wall: WallClock,
        settings: SyncSettings,
        links: Callable[[], Iterable[Link]],
    ) -> None:
        self.me = me
        self.storage = storage
        self.wall = wall
        self.settings = settings
        self.index = VersionIndex()
        self.clock = HybridClock(max_drift_s=settings.max_clock_drift_s)
        self.stats = SyncStats()
        self.on_change: Callable[[list[Row]], None] = lambda rows: None
        self.leader_horizon: tuple[int, int] | None = None  # (term, horizon ms) from the leader
        self._links = links
        self._inbox: deque[tuple[Link, PeerMessage]] = deque()
        self._claims: set[str] = set()
        self._wake = trio.Event()

    def load(self) -> None:
        """Build the in-memory index from the store (at start)."""
        for row in self.storage.read(rows_db.all_meta):
            self.index.put(Meta(row.kind, row.id, row.hlc, row.node, row.owner, row.deleted))
            self.clock.last = max(self.clock.last, row.hlc)

    def apply_settings(self, settings: SyncSettings) -> None:
        self.settings = settings
        self._wake.set()

    # ------------------------------------------------------------------ inputs (never wait)
    def claim(self, device_id: str) -> None:
        """A device opened a session here: make this node its owner (a new version)."""
        self._claims.add(device_id)
        self._wake.set()

    def receive(self, link: Link, message: PeerMessage) -> bool:
        """A link's message for the sync; handled by `run` (its credit returns then)."""
        self._inbox.append((link, message))
        self._wake.set()
        return False

    def link_opened(self, link: Link) -> None:
        """Anti-entropy step 1 on a new link: our digests."""
        self._send_digest(link)

    # ------------------------------------------------------------------ the task
    async def run(self) -> None:
        """Stamp, apply, compare and collect until cancelled."""
        now = trio.current_time()
        next_digest = now + self.settings.anti_entropy_interval_s
        while True:
            with trio.move_on_after(self.settings.poll_interval_s):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.stamp_local()
            except StoreError as exc:  # the changes stay dirty: the next round tries again
                self.stats.apply_errors += 1
                event(log, 40, "mesh sync: could not stamp local changes", error=exc.detail)
            while self._inbox:
                link, message = self._inbox.popleft()
                try:
                    await self._handle(link, message)
                except StoreError as exc:  # anti-entropy repairs what was lost
                    self.stats.apply_errors += 1
                    event(log, 40, "mesh sync: store failed", error=exc.detail)
                finally:
                    link.stream.consumed()
            if trio.current_time() >= next_digest:
                next_digest = trio.current_time() + self.settings.anti_entropy_interval_s
                for link in self._links():
                    self._send_digest(link)
                with contextlib.suppress(StoreError):  # tried again next round
                    await self.collect_tombstones()

    # ------------------------------------------------------------------ local changes
    async def stamp_local(self) -> None:
        """Give every local change a version and send the new versions to every link."""
        claims = set(self._claims)
        entries = self.storage.read(_read_changes, self.settings.batch_max_records, claims)
        stamps: list[tuple[Row, tuple[int, str] | None, int]] = []
        clear: list[tuple[str, str, int]] = []
        for kind, id_, gen, body, stored in entries:
            meta = self.index.get((kind, id_))
            old = stored.body if stored is not None and not stored.deleted else None
            stamp = stamp_for_change(kind, meta, old, body, self.me)
            if id_ in claims and kind == DEVICE and body is not None:
                self._claims.discard(id_)
                if meta is None or meta.owner != self.me or meta.deleted:
                    stamp = Stamp(self.me, False)
            if stamp is None:
                if gen != _NO_GEN:
                    clear.append((kind, id_, gen))
                continue
            row = Row(kind, id_, self.clock.tick(self.wall.now()), self.me, stamp.owner, stamp.deleted,
                      "" if stamp.deleted or body is None else body)  # fmt: skip
            stamps.append((row, None if meta is None else (meta.hlc, meta.node), gen))
        if not stamps and not clear:
            return
        written = await self.storage.write(_commit_stamps, stamps, clear)
        for row in written:
            self.index.put(_meta(row))
        self.stats.stamped += len(written)
        if written:
            self._send_records(written, except_link=None)
            self.on_change(written)

    # ------------------------------------------------------------------ peers' messages
    async def _handle(self, link: Link, message: PeerMessage) -> None:
        if isinstance(message, Records):
            await self._apply(link, message.records)
        elif isinstance(message, Digest):
            self._answer_digest(link, message)
        elif isinstance(message, Versions):
            self._push_differences(link, message)
        elif isinstance(message, Housekeeping):
            self._housekeeping(link, message)

    async def _apply(self, link: Link, records: Iterable[RecordData]) -> None:
        now = self.wall.now()
        rows = []
        for record in records:
            if not _valid(record):
                self.stats.invalid += 1
                continue
            self.clock.observe(record.hlc, now)
            rows.append(record)
        fresh = [r for r in rows if wins(Record(*r), self.index.get((r.kind, r.id)))]
        self.stats.stale += len(rows) - len(fresh)
        if not fresh:
            return
        try:
            won = await self.storage.write(rows_db.apply, fresh, _row_wins)
        except Exception as exc:  # a peer's record must not stop the sync
            self.stats.apply_errors += 1
            event(log, 40, "could not apply records from a peer", peer=link.peer_id, error=str(exc))
            return
        for row in won:
            self.index.put(_meta(row))
        self.stats.applied += len(won)
        if won:
            self._send_records(won, except_link=link)  # onwards, for nodes not linked to the author
            self.on_change(won)

    def _send_digest(self, link: Link) -> None:
        if link.send(Digest(tuple(self.index.digests), len(self.index))):
            self.stats.digests_sent += 1

    def _answer_digest(self, link: Link, digest: Digest) -> None:
        buckets = sorted(differing_buckets(self.index.digests, list(digest.buckets)))
        group: list[int] = []
        versions: list[VersionData] = []
        for bucket in buckets:
            found = self.index.versions_in({bucket})
            if group and len(versions) + len(found) > VERSIONS_PER_MESSAGE:
                link.send(Versions(tuple(group), tuple(versions)))
                group, versions = [], []
            group.append(bucket)
            versions += [VersionData(k, i, v.hlc, v.node) for (k, i), v in found.items()]
        if group:
            link.send(Versions(tuple(group), tuple(versions)))

    def _push_differences(self, link: Link, message: Versions) -> None:
        theirs = {(v.kind, v.id): Version(v.hlc, v.node) for v in message.versions}
        keys = to_push(self.index.versions_in(set(message.buckets)), theirs)
        if keys:
            rows = self.storage.read(rows_db.get_rows, keys)
            self.stats.pushed += len(rows)
            self._send_records(rows, only=link)

    def _send_records(
        self, rows: list[Row], *, except_link: Link | None = None, only: Link | None = None
    ) -> None:
        size = self.settings.batch_max_records
        targets = [only] if only is not None else [x for x in self._links() if x is not except_link]
        for start in range(0, len(rows), size):
            message = Records(tuple(rows[start : start + size]))
            for link in targets:
                if not link.send(message):
                    link.drop("records_backlog_full")  # anti-entropy repairs it later

    # ------------------------------------------------------------------ tombstones
    def _housekeeping(self, link: Link, order: Housekeeping) -> None:
        """The leader's tombstone horizon, fenced by its term (an older term is ignored)."""
        if order.leader_id != link.peer_id:
            return
        if self.leader_horizon is None or order.term >= self.leader_horizon[0]:
            self.leader_horizon = (order.term, order.tombstone_horizon_ms)

    def own_horizon_ms(self) -> int:
        return int((self.wall.now() - self.settings.tombstone_ttl_s) * 1000)

    async def collect_tombstones(self) -> int:
        """Forget tombstones older than the horizon (the leader's, else this node's own)."""
        horizon = self.own_horizon_ms()
        if self.leader_horizon is not None:
            horizon = min(horizon, self.leader_horizon[1])
        keys = self.index.tombstones_before(horizon)
        if not keys:
            return 0
        gone = await self.storage.write(rows_db.delete_records, keys)
        for key in keys:
            self.index.remove(key)
        self.stats.collected += gone
        return gone

    def statistics(self) -> dict[str, Any]:
        stats = {k: getattr(self.stats, k) for k in SyncStats.__slots__}
        tombstones = sum(1 for m in self.index.entries.values() if m.deleted)
        stats.update(records=len(self.index), tombstones=tombstones, pending_claims=len(self._claims))
        stats["hlc_ms"] = hlc_ms(self.clock.last)
        stats["clock_ignored_ahead"] = self.clock.ignored_ahead
        return stats


def _meta(row: Row) -> Meta:
    return Meta(row.kind, row.id, row.hlc, row.node, row.owner, row.deleted)


def _row_wins(incoming: Row, stored: Row | None) -> bool:
    return wins(Record(*incoming), None if stored is None else Record(*stored))


def _valid(record: RecordData) -> bool:
    """A record from a peer this node can apply (the peer is authenticated, not infallible)."""
    if record.kind not in KINDS or not record.node or not record.owner:
        return False
    try:
        uuid.UUID(record.id)
    except ValueError:
        return False
    if record.deleted:
        return True
    try:
        body = json.loads(record.body)
    except ValueError:
        return False
    needed = _DEVICE_KEYS if record.kind == DEVICE else _NETWORK_KEYS
    return isinstance(body, dict) and needed <= body.keys()


def _read_changes(
    conn: apsw.Connection, limit: int, claims: set[str]
) -> list[tuple[str, str, int, str | None, Row | None]]:
    """Local changes (and claimed devices): (kind, id, gen, current body or None, stored row)."""
    keys = [(k, i, g) for k, i, g in rows_db.dirty(conn, limit)]
    seen = {(k, i) for k, i, _ in keys}
    keys += [(DEVICE, d, _NO_GEN) for d in sorted(claims) if (DEVICE, d) not in seen]
    out = []
    for kind, id_, gen in keys:
        fields = rows_db.fields(conn, kind, id_)
        stored = rows_db.get_rows(conn, [(kind, id_)])
        out.append(
            (kind, id_, gen, None if fields is None else canonical(fields), stored[0] if stored else None)
        )
    return out


def _commit_stamps(
    conn: apsw.Connection,
    stamps: list[tuple[Row, tuple[int, str] | None, int]],
    clear: list[tuple[str, str, int]],
) -> list[Row]:
    rows_db.clear_dirty(conn, clear)
    return rows_db.stamp(conn, stamps)
