"""etcd v3 through its JSON gateway: KV, leases with keepalive, watches, a waiting queue, election.

Client choice (see docs/locks.md): the gateway over a small h11 client (`_http.py`) on Trio, not a
library. The maintained Python clients are grpcio-sync (`etcd3`: threads around every call) or
asyncio (`aetcd`, `async-etcd3gw`), none runs on Trio; grpclib stubs may live only in node/rpc/.
Debian's etcd 3.4 serves the gateway at /v3/ on the client port.

The queue recipe (locks and election): every contender puts its own key `prefix + name` with its
session lease, in a transaction guarded by `create_revision == 0` (put-if-absent) that also reads
the whole prefix in the same revision. Keys are ordered by create revision; a contender waits until
the earlier keys that block it are deleted (released, or their lease lapsed). The create revision
of its key is a fencing token: etcd revisions only grow, cluster-wide.
"""

from __future__ import annotations

from base64 import b64decode, b64encode
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio

from node.errors import NodeError, NotFound, Unavailable
from node.locks._http import GatewayClient, JsonLines


def _b64(raw: bytes) -> str:
    return b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with `prefix` (etcd's convention)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue


def _kv(doc: dict[str, Any]) -> KeyValue:
    return KeyValue(
        _unb64(doc.get("key", "")),
        _unb64(doc.get("value", "")),
        int(doc.get("create_revision", 0)),
        int(doc.get("mod_revision", 0)),
        int(doc.get("lease", 0)),
    )


def _revision(doc: dict[str, Any]) -> int:
    return int(doc.get("header", {}).get("revision", 0))


class EtcdClient:
    """The etcd operations the node needs, each one gateway round trip."""

    def __init__(self, gateway: GatewayClient) -> None:
        self.gateway = gateway

    async def lease_grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds)."""
        doc = await self.gateway.post("/v3/lease/grant", {"TTL": ttl_s})
        if doc.get("error"):
            raise Unavailable(f"etcd lease grant: {doc['error']}")
        return int(doc["ID"]), int(doc.get("TTL", 0))

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew once; the remaining TTL in seconds (0: the lease is gone)."""
        doc = await self.gateway.post("/v3/lease/keepalive", {"ID": lease_id})
        return int(doc.get("result", {}).get("TTL", 0))

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete its keys (a lease that is already gone is fine)."""
        try:
            await self.gateway.post("/v3/lease/revoke", {"ID": lease_id})
        except NotFound:
            return

    async def range_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix`, oldest (lowest create revision) first, and the revision."""
        doc = await self.gateway.post("/v3/kv/range", _range_doc(prefix))
        return _revision(doc), [_kv(kv) for kv in doc.get("kvs", [])]

    async def delete(self, key: bytes) -> int:
        """Delete one key; the revision after the delete."""
        doc = await self.gateway.post_body("/v3/kv/deleterange", b'{"key":"%s"}' % b64encode(key))
        return _revision(doc)

    async def put_if_absent(
        self, key: bytes, value: bytes, lease_id: int, read_prefix: bytes
    ) -> tuple[bool, int, list[KeyValue]]:
        """Put `key` only if absent and read `read_prefix` in the same revision.

        Returns (created, revision of the transaction, keys under the prefix oldest first).
        """
        # The body from a template (base64 is JSON-safe): on the lock path, cheaper than
        # building and encoding nested dicts.
        key64, read = b64encode(key), _RANGE % (b64encode(read_prefix), b64encode(prefix_end(read_prefix)))
        body = _TXN % (key64, key64, b64encode(value), lease_id, read, read)
        doc = await self.gateway.post_body("/v3/kv/txn", body)
        responses = doc.get("responses", [])
        kvs = [_kv(kv) for kv in responses[-1].get("response_range", {}).get("kvs", [])]
        return bool(doc.get("succeeded")), _revision(doc), kvs

    @asynccontextmanager
    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchStream]:
        """Watch every key under `prefix` from `start_revision`; yields batches of events.

        The iterator raises Unavailable when the stream breaks or etcd cancels the watch
        (for example because `start_revision` was compacted): re-read and watch again.
        """
        create = {"create_request": {**_range_doc(prefix), "start_revision": str(start_revision)}}
        async with self.gateway.stream("/v3/watch", create) as lines:
            yield WatchStream(lines)


_TXN = (
    b'{"compare":[{"key":"%s","target":"CREATE","result":"EQUAL","create_revision":"0"}],'
    b'"success":[{"request_put":{"key":"%s","value":"%s","lease":"%d"}},{"request_range":%s}],'
    b'"failure":[{"request_range":%s}]}'
)
_RANGE = b'{"key":"%s","range_end":"%s","sort_order":"ASCEND","sort_target":"CREATE"}'


def _range_doc(prefix: bytes) -> dict[str, Any]:
    return {
        "key": _b64(prefix),
        "range_end": _b64(prefix_end(prefix)),
        "sort_order": "ASCEND",
        "sort_target": "CREATE",
    }


class WatchStream:
    """Batches of watch events (an iterator class: stopping early leaves nothing to finalize)."""

    def __init__(self, lines: JsonLines) -> None:
        self._lines = lines

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> list[WatchEvent]:
        while True:
            line = await self._lines.__anext__()
            result = line.get("result", {})
            if line.get("error") or result.get("canceled") or result.get("compact_revision"):
                raise Unavailable("etcd watch cancelled", compact_revision=result.get("compact_revision"))
            events = [
                WatchEvent(event.get("type") == "DELETE", _kv(event.get("kv", {})))
                for event in result.get("events", [])
            ]
            if events:
                return events


@asynccontextmanager
async def open_etcd_client(
    endpoints: Sequence[str], *, connect_timeout_s: float = 1.0, request_timeout_s: float = 2.0
) -> AsyncIterator[EtcdClient]:
    """An etcd client for the given gateway URLs (tried in order on connection failure)."""
    gateway = GatewayClient(
        endpoints, connect_timeout_s=connect_timeout_s, request_timeout_s=request_timeout_s
    )
    try:
        yield EtcdClient(gateway)
    finally:
        await gateway.aclose()


class EtcdSession:
    """A lease kept alive at TTL/3; `valid_until` is when it may lapse, on Trio's clock.

    `valid_until` is conservative: send time of the last successful keepalive + the TTL etcd
    answered, so etcd cannot have expired the lease (and handed our keys' locks on) before it.
    """

    def __init__(self, client: EtcdClient, lease_id: int, ttl_s: int, granted_at: float) -> None:
        self.client = client
        self.lease_id = lease_id
        self.ttl_s = ttl_s
        self.valid_until = granted_at + ttl_s
        self.lost = trio.Event()
        self.keepalives = 0

    def alive(self) -> bool:
        return not self.lost.is_set() and trio.current_time() < self.valid_until

    async def keep_alive(self) -> None:
        """Renew until the lease is gone or has lapsed; then set `lost` and return."""
        interval = max(self.ttl_s / 3, 0.2)
        delay = interval
        try:
            while True:
                with trio.move_on_at(self.valid_until):
                    await trio.sleep(delay)
                    sent = trio.current_time()
                    try:
                        ttl = await self.client.lease_keepalive(self.lease_id)
                    except NodeError:
                        delay = min(interval, 0.5)  # retry soon: the lease is running out
                        continue
                    delay = interval
                    if ttl <= 0:
                        return
                    self.valid_until = sent + ttl
                    self.keepalives += 1
                    continue
                return  # valid_until passed without a successful renewal
        finally:
            self.lost.set()


@asynccontextmanager
async def open_etcd_session(client: EtcdClient, ttl_s: int) -> AsyncIterator[EtcdSession]:
    """Grant a lease and keep it alive while the block runs; revoke it on the way out."""
    sent = trio.current_time()
    lease_id, ttl = await client.lease_grant(ttl_s)
    session = EtcdSession(client, lease_id, ttl, sent)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.keep_alive)
            yield session
            nursery.cancel_scope.cancel()
    finally:
        session.lost.set()
        with trio.move_on_after(client.gateway.request_timeout_s) as scope:
            scope.shield = True
            with suppress(NodeError):  # else etcd lets the lease lapse by itself within its TTL
                await client.lease_revoke(lease_id)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """Our key in a queue: its create revision and the keys that were ahead of it."""

    key: bytes
    revision: int
    ahead: tuple[KeyValue, ...]


async def enqueue(session: EtcdSession, prefix: bytes, name: bytes, value: bytes) -> QueueEntry:
    """Put our key `prefix + name` (put-if-absent, on the session's lease) and see who is ahead."""
    key = prefix + name
    created, _, kvs = await session.client.put_if_absent(key, value, session.lease_id, prefix)
    if not created:
        raise Unavailable(f"etcd: queue key {key!r} already exists")
    mine = [kv for kv in kvs if kv.key == key]
    if not mine:
        raise Unavailable("etcd: our queue key vanished at once")
    ahead = tuple(kv for kv in kvs if kv.create_revision < mine[0].create_revision)
    return QueueEntry(key, mine[0].create_revision, ahead)


async def wait_turn(
    client: EtcdClient, prefix: bytes, entry: QueueEntry, blocks: Callable[[KeyValue], bool]
) -> None:
    """Wait until no key ahead of `entry` that `blocks` us is left; Unavailable if ours goes."""
    blockers = {kv.key for kv in entry.ahead if blocks(kv)}
    start = entry.revision + 1
    while blockers:
        try:
            async with client.watch(prefix, start) as stream:
                start = await _follow(stream, entry.key, blockers, start)
        except Unavailable as exc:
            if exc.extra.get("compact_revision") is None:
                raise
        if not blockers:
            return
        # The watch history was compacted: read the queue again and go on from there.
        revision, kvs = await client.range_prefix(prefix)
        if all(kv.key != entry.key for kv in kvs):
            raise Unavailable("etcd: our queue key was deleted (lease lapsed?)")
        blockers &= {kv.key for kv in kvs}
        start = revision + 1


async def _follow(stream: WatchStream, own: bytes, blockers: set[bytes], start: int) -> int:
    """Drop deleted keys from `blockers` until it is empty; the next revision to watch from."""
    async for events in stream:
        for event in events:
            start = max(start, event.kv.mod_revision + 1)
            if event.deleted:
                if event.kv.key == own:
                    raise Unavailable("etcd: our queue key was deleted (lease lapsed?)")
                blockers.discard(event.kv.key)
        if not blockers:
            break
    return start


class Election:
    """Leader election on a key prefix: the oldest live campaigner leads.

    `campaign` puts the session's key and waits until it is the oldest; `observe` follows who
    leads; `resign` deletes the key (the next oldest takes over; so does it when our lease lapses).
    """

    def __init__(self, client: EtcdClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix

    async def campaign(self, session: EtcdSession, value: bytes) -> QueueEntry:
        """Return once we lead; the entry's revision fences our leadership."""
        entry = await enqueue(session, self.prefix, b"%016x" % session.lease_id, value)
        await wait_turn(self.client, self.prefix, entry, lambda _kv: True)
        return entry

    async def resign(self, entry: QueueEntry) -> None:
        await self.client.delete(entry.key)

    async def leader(self) -> KeyValue | None:
        _, kvs = await self.client.range_prefix(self.prefix)
        return kvs[0] if kvs else None

    async def observe(self) -> AsyncIterator[KeyValue | None]:
        """Yield the leader now and after every change (None while nobody leads).

        An async generator: iterate it inside `contextlib.aclosing(...)` if you may stop early.
        """
        last: tuple[bytes, int] | None = (b"", -1)
        while True:
            revision, kvs = await self.client.range_prefix(self.prefix)
            current = kvs[0] if kvs else None
            ident = (current.key, current.create_revision) if current else None
            if ident != last:
                last = ident
                yield current
            async with self.client.watch(self.prefix, revision + 1) as stream:
                async for _events in stream:
                    break
