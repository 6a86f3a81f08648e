"""Leader election of the mesh on etcd, or standalone without it.

With `mesh.election.etcd_endpoints` set, the node campaigns on `<key_prefix><cluster_id>/leader/`
through the lock service's etcd client (`node.locks.etcd`): it puts its key on its own lease
(put-if-absent, `enqueue`), keeps the lease alive at TTL/3 and follows the queue; the oldest live key
leads, and its create revision is the term. When the leader's lease lapses (node dead, or cut off
from etcd) etcd deletes its key and the next oldest leads. The rules of what the node may claim are
in `_election_state.py`: never leadership past its own lease's conservative validity.

Leader-only duty: cluster housekeeping every `housekeeping_interval_s`. The leader writes the
cluster summary (members, term, time) to `<key_prefix><cluster_id>/housekeeping` in a transaction
that only succeeds while its campaign key still exists with the term as create revision (the term
is the fencing token, checked by etcd itself), then runs the duties registered with `add_duty`
(each gets the term; e.g. the mesh collecting expired tombstones). Without etcd the node is its own
leader and runs its duties with term None.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import trio

from node.clock import WallClock
from node.errors import NodeError, Unavailable
from node.locks.etcd import (
    EtcdClient,
    EtcdSession,
    KeyValue,
    QueueEntry,
    enqueue,
    open_etcd_client,
    open_etcd_session,
)
from node.logs import event, logger
from node.mesh._election_state import ElectionState, Mode
from node.mesh.settings import ElectionSettings

log = logger("mesh.election")
Duty = Callable[[int | None], Awaitable[None]]
MAX_NODE_ID_BYTES = 256


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _node_of(kv: KeyValue) -> str:
    """The node id a campaign key carries (its value; bounded, never trusted beyond display)."""
    return kv.value[:MAX_NODE_ID_BYTES].decode("utf-8", "replace")


class LeaderElection:
    """Who leads the cluster; `status()` for the API, `term()` as the fencing token of duties."""

    def __init__(
        self, settings: ElectionSettings, *, node_id: str, cluster_id: str, clock: WallClock
    ) -> None:
        self._settings = settings
        self._clock = clock
        self.node_id = node_id
        self.prefix = f"{settings.key_prefix}{cluster_id}/".encode()
        self.election_prefix = self.prefix + b"leader/"
        self.housekeeping_key = self.prefix + b"housekeeping"
        mode: Mode = "etcd" if settings.etcd_endpoints else "standalone"
        self.state = ElectionState(node_id, mode, clock.now())
        self._duties: list[tuple[str, Duty]] = []
        self._session: EtcdSession | None = None
        self._entry: QueueEntry | None = None
        self._client: EtcdClient | None = None
        self._housekeeping: deque[dict[str, Any]] = deque(maxlen=16)
        self._stats = {"campaigns": 0, "failures": 0, "housekeeping_runs": 0, "fenced_out": 0}

    # ------------------------------------------------------------ public API

    @property
    def mode(self) -> str:
        return self.state.mode

    def is_leader(self) -> bool:
        return self.state.is_leader(self._renewed())

    def term(self) -> int | None:
        """The fencing token of leader-only work: our term while we lead, else None."""
        return self.state.term(self._renewed())

    def _renewed(self) -> float:
        """Tell the state how long our lease is valid now (keepalives move it); the time now."""
        now = trio.current_time()
        if self._session is not None:
            self.state.renewed(self._session.valid_until, now, self._clock.now())
        return now

    def add_duty(self, name: str, duty: Duty) -> None:
        """Run `duty(term)` on every housekeeping round while this node leads."""
        self._duties.append((name, duty))

    def apply_settings(self, settings: ElectionSettings) -> None:
        """Apply the live fields (the housekeeping interval); the rest needs a restart."""
        self._settings = self._settings.model_copy(
            update={"housekeeping_interval_s": settings.housekeeping_interval_s}
        )

    def status(self) -> dict[str, Any]:
        """mode, leader, term, is_leader, since, the history of changes and our own tenures."""
        doc = self.state.status(self._renewed(), self._clock.now())
        doc["campaign_term"] = self._entry.revision if self._entry and self._session else None
        doc["housekeeping"] = list(self._housekeeping)
        doc.update(self._stats)
        if self._client is not None:
            doc["etcd_requests"] = self._client.gateway.requests
            doc["etcd_failures"] = self._client.gateway.failures
        return doc

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Campaign (or stand alone) and run the housekeeping duty until cancelled."""
        if self.mode == "standalone":
            event(log, 20, "election standalone: this node is its own leader", node_id=self.node_id)
            task_status.started()
            await self._duty_loop()
            return
        s = self._settings
        async with open_etcd_client(
            s.etcd_endpoints, connect_timeout_s=s.connect_timeout_s, request_timeout_s=s.request_timeout_s
        ) as client:
            self._client = client
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._duty_loop)
                task_status.started()
                await self._campaign_forever(client)

    # ------------------------------------------------------------ campaigning

    async def _campaign_forever(self, client: EtcdClient) -> None:
        while True:
            try:
                await self._campaign_once(client)
                reason = "our etcd lease lapsed or was revoked"
            except NodeError as exc:
                self._stats["failures"] += 1
                reason = f"etcd unreachable or failing ({exc})"
            self._lose(reason)
            await trio.sleep(self._settings.retry_s)

    async def _campaign_once(self, client: EtcdClient) -> None:
        """One lease: put our key, follow the queue until the lease is gone."""
        async with open_etcd_session(client, self._settings.lease_ttl_s) as session:
            self._session = session
            try:
                name = b"%016x" % session.lease_id
                entry = await enqueue(session, self.election_prefix, name, self.node_id.encode())
                self._entry = entry
                self._stats["campaigns"] += 1
                event(log, 20, "campaigning", node_id=self.node_id, term=entry.revision)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._follow, client, entry, session)
                    await session.lost.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self._session = None

    async def _follow(self, client: EtcdClient, entry: QueueEntry, session: EtcdSession) -> None:
        """Read the queue, note the oldest key, wait for a change (at most TTL/3); again.

        A broken watch is retried; while etcd cannot be read the view lapses with our lease.
        """
        while True:
            try:
                revision, kvs = await client.range_prefix(self.election_prefix)
                if all(kv.key != entry.key for kv in kvs):
                    event(log, 30, "our campaign key is gone", term=entry.revision)
                    session.lost.set()  # the lease went with it: campaign again on a new one
                    return
                self._observed(kvs[0], entry, session)
                with trio.move_on_after(session.ttl_s / 3):
                    async with client.watch(self.election_prefix, revision + 1) as stream:
                        async for _events in stream:
                            break
            except Unavailable:
                await trio.sleep(min(self._settings.retry_s, session.ttl_s / 3))

    def _observed(self, head: KeyValue, entry: QueueEntry, session: EtcdSession) -> None:
        before = self.state.view()
        own = head.key == entry.key
        now, wall = trio.current_time(), self._clock.now()
        self.state.observed(_node_of(head), head.create_revision, own, session.valid_until, now, wall)
        if self.state.view() != before:
            event(log, 20, "leader", leader=_node_of(head), term=head.create_revision, is_leader=own)

    def _lose(self, reason: str) -> None:
        now = trio.current_time()
        was_leader, before = self.state.is_leader(now), self.state.view()
        self.state.lost(now, self._clock.now(), reason)
        self._entry = None
        level = 30 if was_leader else 20 if self.state.view() != before else 10  # once, not per retry
        event(log, level, "no leader known", node_id=self.node_id, reason=reason, was_leader=was_leader)

    # ------------------------------------------------------------ leader-only duty

    async def _duty_loop(self) -> None:
        while True:
            await trio.sleep(self._settings.housekeeping_interval_s)
            if self.mode == "standalone":
                await self._housekeep(None, None)
                continue
            term, session, entry, client = self.term(), self._session, self._entry, self._client
            if term is None or session is None or entry is None or client is None:
                continue  # not leading (or no longer): the duty is the leader's alone
            with trio.move_on_at(session.valid_until):  # never work past our claim
                await self._housekeep(term, (client, entry))

    async def _housekeep(self, term: int | None, fence: tuple[EtcdClient, QueueEntry] | None) -> None:
        """One round: the fenced cluster summary in etcd, then the registered duties with the term."""
        members = [self.node_id]
        if term is not None and fence is not None:
            try:
                members, written = await self._write_summary(*fence, term)
            except NodeError as exc:
                event(log, 30, "housekeeping failed", term=term, error=str(exc))
                return
            if not written:
                self._stats["fenced_out"] += 1
                event(log, 30, "housekeeping fenced out: our term is over", term=term)
                return
        for name, duty in self._duties:
            try:
                await duty(term)
            except NodeError as exc:
                event(log, 30, "leader duty failed", duty=name, term=term, error=str(exc))
        self._stats["housekeeping_runs"] += 1
        record = {"term": term, "at": self._clock.now(), "members": members}
        self._housekeeping.append(record)
        event(log, 20, "cluster housekeeping", leader=self.node_id, **record)

    async def _write_summary(
        self, client: EtcdClient, entry: QueueEntry, term: int
    ) -> tuple[list[str], bool]:
        """Put the summary only if our campaign key still has create revision `term` (the fence)."""
        _, kvs = await client.range_prefix(self.election_prefix)
        members = [_node_of(kv) for kv in kvs]
        summary = {"leader": self.node_id, "term": term, "at": self._clock.now(), "members": members}
        guard = {"key": _b64(entry.key), "target": "CREATE", "result": "EQUAL", "create_revision": str(term)}
        value = json.dumps(summary, separators=(",", ":")).encode()
        put = {"request_put": {"key": _b64(self.housekeeping_key), "value": _b64(value)}}
        doc = await client.gateway.post("/v3/kv/txn", {"compare": [guard], "success": [put]})
        return members, bool(doc.get("succeeded"))


async def read_housekeeping(client: EtcdClient, election: LeaderElection) -> dict[str, Any] | None:
    """The last cluster summary a leader wrote (None when there is none)."""
    _, kvs = await client.range_prefix(election.housekeeping_key)
    for kv in kvs:
        if kv.key == election.housekeeping_key:
            with suppress(ValueError):
                doc = json.loads(kv.value)
                return doc if isinstance(doc, dict) else None
    return None
