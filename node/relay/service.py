"""The WebSocket relay service: handshake decisions, sessions, registration, the queue drain.

`RelayService.serve(host, port, shutdown=...)` listens with the batched engine (`_wsserve`), runs
one `DeviceLink` per connection (reader + writer task in the connection's nursery) and three
background tasks: the queue's delete writer, the TTL purger and the registry event fan-out. When
`shutdown` is set it refuses new upgrades (503), closes every session with 1001, waits for them
(the caller bounds this with its grace period), writes pending DELIVERED deletes and returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from node.auth import Principal
from node.clock import WallClock
from node.errors import NodeError, NotFound, Unauthenticated, Unavailable
from node.logs import event, logger
from node.registry import DeviceSpec, Registry
from node.relay._control import BUILTIN_HANDLERS
from node.relay._directory import StoreDirectory
from node.relay._events import EventHub
from node.relay._link import CLOSE_REPLACED, CLOSE_REVOKED, DeviceLink, FrameHandler
from node.relay._queue import DurableQueue
from node.relay._transport import ChannelTransport
from node.relay._wsserve import WsEngine, WsRequest, serve_ws
from node.relay.settings import RelaySettings
from node.relay.state import Phase, id_bytes, origin_allowed, reach_of
from node.router import (
    DeliveryState,
    FlushHub,
    PeerRoutes,
    Router,
    RoutingTable,
    Session,
    drain,
    nack_frame,
)
from node.storage import Storage
from node.tokens import TokenService
from store import queue as q
from wire.device import (
    LOCK_TYPES,
    AnycastPolicy,
    Flags,
    Register,
    Registered,
    Welcome,
    capability_id,
    encode_control,
    with_flags,
)
from wire.ws import CLOSE_GOING_AWAY

log = logger("relay")

_POLICIES = {"round-robin": AnycastPolicy.ROUND_ROBIN, "least-outstanding": AnycastPolicy.LEAST_OUTSTANDING}
_REDELIVERED = int(Flags.REDELIVERED)


@dataclass(slots=True)
class RelayStats:
    """Counters of the relay (the router and the queue keep their own)."""

    connections: int = 0
    registrations: int = 0
    replaced: int = 0
    messages_in: int = 0
    frames_out: int = 0
    redelivered: int = 0  # frames sent again from the queue (copies with REDELIVERED set)
    bytes_in: int = 0  # WebSocket bytes of closed connections (open ones are added on reading)
    bytes_out: int = 0
    rate_limited: int = 0
    store_errors: int = 0
    closes: dict[int, int] = field(default_factory=dict)
    nacks: dict[int, int] = field(default_factory=dict)


class RelayService:
    """Device sessions over WebSocket, routed through a Router, backed by the offline queue."""

    def __init__(
        self,
        settings: RelaySettings,
        *,
        storage: Storage,
        registry: Registry,
        tokens: TokenService,
        clock: WallClock,
        node_name: str = "asgard",
        peers: PeerRoutes | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.registry = registry
        self.tokens = tokens
        self.clock = clock
        self.node_name = node_name
        self.max_payload = settings.max_payload_bytes
        self.table = RoutingTable()
        self.hub = FlushHub()
        self.router = Router(
            self.table,
            StoreDirectory(storage),
            peers=peers,
            anycast_default=_POLICIES[settings.anycast_default],
        )
        self.queue = DurableQueue(storage, settings.queue, clock)
        self.events = EventHub()
        self.engine = WsEngine(settings.websocket)
        self.handlers: dict[int, FrameHandler] = dict(BUILTIN_HANDLERS)
        self.links: set[DeviceLink] = set()
        self.stats = RelayStats()
        self._closed_hooks: list[Callable[[DeviceLink], None]] = []
        self._opened_hooks: list[Callable[[DeviceLink], None]] = []
        self._stopping = False
        self._all_closed = trio.Event()

    # ------------------------------------------------------------------ extension seam
    def set_handler(self, frame_type: int, handler: FrameHandler) -> None:
        """Handle frames of a lock type (0x20-0x2F); the lock integration fills these in."""
        if frame_type not in LOCK_TYPES:
            raise ValueError("only lock frame types (0x20-0x2F) take outside handlers")
        self.handlers[frame_type] = handler

    def on_link_closed(self, hook: Callable[[DeviceLink], None]) -> None:
        """Call `hook(link)` when a connection ends (e.g. to release its locks)."""
        self._closed_hooks.append(hook)

    def on_session_opened(self, hook: Callable[[DeviceLink], None]) -> None:
        """Call `hook(link)` when a connection registers its device (e.g. to keep its locks)."""
        self._opened_hooks.append(hook)

    # ------------------------------------------------------------------ serving
    async def serve(
        self,
        host: str,
        port: int,
        *,
        shutdown: trio.Event | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (or `shutdown` is set and every session has closed).

        Reports the endpoint URL, e.g. `ws://127.0.0.1:7701/v1/ws`.
        """
        self._load_groups()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.queue.run_deleter, name="relay-queue-deletes")
            nursery.start_soon(self.queue.run_purger, self.removed_from_queue, name="relay-queue-purge")
            nursery.start_soon(self._watch_registry, name="relay-events")
            bound = await nursery.start(partial(serve_ws, self._handle, self.engine, host=host, port=port))
            task_status.started(_url(bound[0], bound[1], self.settings.path))
            event(log, 20, "relay listening", host=bound[0], port=bound[1], path=self.settings.path)
            if shutdown is None:
                await trio.sleep_forever()
            await shutdown.wait()
            await self._close_all()
            nursery.cancel_scope.cancel()

    async def _close_all(self) -> None:
        self._stopping = True
        for link in list(self.links):
            link.close(CLOSE_GOING_AWAY, "node shutting down")
        if self.links:
            await self._all_closed.wait()
        await self.queue.flush()

    def _load_groups(self) -> None:
        for m in self.storage.read(q.memberships):
            self.table.join(m.group_id, id_bytes(m.network_id), m.name, id_bytes(m.device_id), m.device_id)

    async def _handle(self, request: WsRequest) -> None:
        settings, req = self.settings, request.request
        if req.path != settings.path:
            await request.reject(404)
            return
        if not origin_allowed(req.origin, settings.allowed_origins):
            await request.reject(403, body=b"origin not allowed\n")
            return
        if self._stopping:
            await request.reject(503, extra_headers=(("Retry-After", "5"),))
            return
        token = req.bearer_token
        principal = self.authenticate(token) if token is not None else None
        if token is not None and principal is None:
            headers = (("WWW-Authenticate", 'Bearer error="invalid_token"'),)
            await request.reject(401, body=b"invalid token\n", extra_headers=headers)
            return
        ws = await request.accept()
        link = DeviceLink(self, ws, principal, token)
        await self._run_link(link)

    async def run_channel_session(
        self,
        principal: Principal,
        frames_in: trio.abc.ReceiveChannel[bytes],
        frames_out: trio.abc.SendChannel[bytes],
    ) -> tuple[int, str]:
        """Run a device session over a pair of frame channels (a gRPC Connect stream) until it
        ends; returns its close (code, reason). The caller has authenticated `principal`."""
        if self._stopping:
            raise Unavailable("the node is shutting down")
        timeout_s = self.settings.websocket.write_timeout_s
        transport = ChannelTransport(frames_in, frames_out, write_timeout_s=timeout_s)
        link = DeviceLink(self, transport, principal, None)
        link.hello_optional = True
        await self._run_link(link)
        return link.close_code or 1000, link.close_reason

    async def _run_link(self, link: DeviceLink) -> None:
        self.links.add(link)
        self.stats.connections += 1
        try:
            await link.run([self.welcome(link, 0)] if link.principal is not None else [])
        finally:
            code = link.close_code or 1000
            self.stats.closes[code] = self.stats.closes.get(code, 0) + 1
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.settings.websocket.close_timeout_s
                await self._cleanup(link)
            self.links.discard(link)
            if self._stopping and not self.links:
                self._all_closed.set()
        await link.transport.aclose(code, link.close_reason)
        counters = link.transport.statistics()
        self.stats.bytes_in += counters.bytes_in
        self.stats.bytes_out += counters.bytes_out

    async def _cleanup(self, link: DeviceLink) -> None:
        self.events.forget(link)
        for hook in self._closed_hooks:
            hook(link)
        if link.session is not None:
            self.table.remove(link.session)
        if link.connection_id is not None and link.principal is not None:
            try:
                await self.registry.close_connection(link.principal, link.connection_id)
            except NodeError as exc:
                event(log, 30, "could not close the connection record", error=exc.detail)

    # ------------------------------------------------------------------ sessions
    def authenticate(self, token: str) -> Principal | None:
        """The token's principal, or None when it is not valid."""
        try:
            return self.tokens.authenticate(token)
        except Unauthenticated:
            return None

    def welcome(self, link: DeviceLink, message_id: int) -> bytes:
        """The WELCOME frame for an authenticated connection."""
        principal = link.principal
        assert principal is not None
        device = uuid.UUID(principal.device_id) if principal.device_id else None
        message = Welcome(
            node=self.node_name,
            session_id=link.session_id,
            heartbeat_interval_s=self.registry.settings.heartbeat_interval_s,
            max_payload_bytes=self.max_payload,
            device_id=device,
        )
        return encode_control(message, message_id=message_id, destination=device or bytes(16))

    async def register(self, link: DeviceLink, reg: Register, message_id: int, replies: list[bytes]) -> None:
        """REGISTER: registry first, then the routing entry, then REGISTERED, then the drain."""
        principal = link.principal
        assert principal is not None
        spec = DeviceSpec(
            device_id=str(reg.device_id),
            network_id=str(reg.network_id),
            world_type=reg.world_type,
            name=reg.name,
            capabilities=reg.capabilities or (),
            hardware_spec=reg.hardware_spec,
        )
        device, _created = await self.registry.register_device(principal, spec)
        if link.connection_id is None:
            record = await self.registry.open_connection(principal, device.device_id, None, kind="session")
            link.connection_id = record.connection_id
        if link.closing:
            return
        session = self._session(link, device.device_id, device.networks, device.capabilities)
        previous, link.session = link.session, session
        replaced = self.table.add(session)
        if replaced is not None and replaced is not previous:  # another connection of the device
            replaced.close(CLOSE_REPLACED, "replaced by a newer session")
            self.stats.replaced += 1
        link.device, link.phase = device, Phase.REGISTERED
        self.stats.registrations += 1
        depth = self.queue.depth(device.device_id)
        answer = Registered(
            reg.device_id, reg.network_id, depth.messages, replaced is not None and replaced is not previous
        )
        link._reply(replies)  # earlier answers first; REGISTERED precedes the queued messages
        replies.clear()
        link.send(encode_control(answer, message_id=message_id, destination=session.device_id))
        for hook in self._opened_hooks:
            hook(link)
        session.outbox.wake()

    def _session(
        self, link: DeviceLink, device_id: str, networks: tuple[str, ...], caps: tuple[str, ...]
    ) -> Session:
        assert link.principal is not None
        session = Session(
            device_id=id_bytes(device_id),
            device_text=device_id,
            session_id=link.session_id,
            networks=frozenset(id_bytes(n) for n in networks),
            reach=reach_of(link.principal),
            capabilities=tuple(capability_id(c) for c in caps),
            outbox=link.outbox,
            delivery=link.session.delivery if link.session else DeliveryState(self.settings.max_inflight),
            close=link.close,
        )
        session.groups = self.table.groups_of(session.device_id)
        return session

    async def heartbeat(self, link: DeviceLink) -> bool:
        """HEARTBEAT: re-check the token (closing with 4003 when revoked), refresh the registry."""
        if not self._token_still_valid(link):
            link.close(CLOSE_REVOKED, "token revoked or expired")
            return False
        if link.device is not None:
            link.device = await self.registry.seen(link.device)
        return True

    def _token_still_valid(self, link: DeviceLink) -> bool:
        if link.token is not None:
            return self.authenticate(link.token) is not None
        if link.principal is None:
            return True
        try:  # a session authenticated by its caller (gRPC): check the token row it came from
            row = self.tokens.get(link.principal.token_id)
        except NotFound:
            return True  # not a local token (validated by Heimdall): nothing here to re-check
        return row.revoked_at is None and (row.expires_at is None or row.expires_at > self.clock.now())

    async def refresh(self, link: DeviceLink) -> None:
        """Traffic counts as a heartbeat: last_seen and the connection record (throttled by the link)."""
        try:
            if link.device is not None:
                link.device = await self.registry.seen(link.device)
            if link.connection_id is not None and link.principal is not None:
                await self.registry.heartbeat_connection(link.principal, link.connection_id)
        except NodeError as exc:  # the device or record was removed meanwhile: the event closes it
            event(log, 10, "session refresh failed", error=exc.detail)

    # ------------------------------------------------------------------ the queue
    def drain(self, session: Session) -> None:
        """Push queued rows after the session's cursor while its outbox and in-flight limit allow."""

        def read(after: int, max_rows: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], bool]:
            return self.queue.pending(session.device_text, after, max_rows=max_rows, max_bytes=max_bytes)

        self.stats.redelivered += drain(session, read, _redelivered)

    def removed_from_queue(self, refs: list[q.QueuedRef], reason: int) -> None:
        """Rows left the queue undelivered (expired, dropped): free their slots, NACK their senders."""
        for ref in refs:
            receiver = self.table.by_text.get(ref.device_id)
            if receiver is not None:
                receiver.delivery.forget(ref.seq, (ref.source, ref.message_id))
                if receiver.delivery.wants_drain():
                    receiver.outbox.wake()
            sender = self.table.sessions.get(ref.source)
            if sender is not None:
                sender.outbox.put_control(nack_frame(ref.message_id, ref.source, reason))

    # ------------------------------------------------------------------ registry events
    async def _watch_registry(self) -> None:
        async with self.registry.subscribe() as events:
            async for ev in events:
                if ev.kind == "unregistered":
                    self.device_removed(ev.device_id)
                self.events.publish(ev)

    def device_removed(self, device_id: str) -> None:
        """A device was unregistered: close its session with 4003 and forget its groups."""
        session = self.table.by_text.get(device_id)
        if session is not None:
            session.close(CLOSE_REVOKED, "device removed")
        self.table.forget_device(id_bytes(device_id))

    # ------------------------------------------------------------------ settings and statistics
    def apply_settings(self, settings: RelaySettings) -> None:
        """Apply the live fields (see node.relay.settings); the others wait for a restart."""
        self.settings = settings.model_copy(
            update={
                "host": self.settings.host,
                "port": self.settings.port,
                "path": self.settings.path,
                "max_payload_bytes": self.settings.max_payload_bytes,
            }
        )
        self.engine.apply_settings(settings.websocket)
        self.queue.apply_settings(settings.queue)
        self.router.anycast_default = _POLICIES[settings.anycast_default]

    def statistics(self) -> dict[str, Any]:
        """Counters for /api/v1/admin/stats and /metrics."""
        depths = [len(s.outbox.frames) for s in self.table.sessions.values()]
        r, s, qs = self.router.stats, self.stats, self.queue.stats
        queued_devices, queued_messages, queued_bytes = self.storage.read(q.totals)
        return {
            "connections_open": len(self.links),
            "sessions": len(self.table),
            "connections_total": s.connections,
            "registrations": s.registrations,
            "sessions_replaced": s.replaced,
            "messages_in": s.messages_in,
            "frames_out": s.frames_out,
            "routed": {_TYPE_NAMES[t]: n for t, n in r.routed.items()},
            "delivered_by_reference": r.delivered + r.live_durable,
            "redelivered_copies": s.redelivered,
            "forwarded": r.forwarded,
            "queued": r.queued,
            "dropped": dict(r.dropped),
            "nacks": {str(k): v for k, v in sorted(s.nacks.items())},
            "closes": {str(k): v for k, v in sorted(s.closes.items())},
            "rate_limited": s.rate_limited,
            "store_errors": s.store_errors,
            "outbox_depth_max": max(depths, default=0),
            "outbox_depth_sum": sum(depths),
            "queue": {
                "devices": queued_devices,
                "messages": queued_messages,
                "bytes": queued_bytes,
                "expired": qs.expired,
                "dropped_oldest": qs.dropped_oldest,
                "refused_full": qs.refused_full,
                "deleted": qs.deleted,
            },
            "events_sent": self.events.sent,
            "bytes_in": s.bytes_in + sum(link.transport.statistics().bytes_in for link in self.links),
            "bytes_out": s.bytes_out + sum(link.transport.statistics().bytes_out for link in self.links),
        }


_TYPE_NAMES = {0x10: "direct", 0x11: "broadcast", 0x12: "multicast", 0x13: "anycast"}


def _redelivered(frame: bytes) -> bytes:
    """A queued frame as it is sent again: REDELIVERED set (a copy, off the hot path)."""
    return with_flags(frame, int.from_bytes(frame[2:4], "big") | _REDELIVERED)


def _url(host: str, port: int, path: str) -> str:
    return f"ws://[{host}]:{port}{path}" if ":" in host else f"ws://{host}:{port}{path}"
