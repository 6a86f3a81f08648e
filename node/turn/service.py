"""The STUN/TURN service on Trio: UDP and TCP listeners on one port, UDP relay sockets, timers.

Relay hot paths read the state's route dicts directly and drain each socket with non-blocking
`recvfrom_into` before yielding; a datagram that cannot be sent at once is dropped and counted.
Everything else goes through the pure `TurnProtocol`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from node.errors import Unavailable
from node.turn._authn import Authenticator
from node.turn._engine import Control, RelayEngine
from node.turn._nonce import NonceIssuer
from node.turn._protocol import Client, OpenedRelays, Outcome, PendingAllocate, ProtocolConfig, TurnProtocol
from node.turn._sockets import (
    AF_OF_FAMILY,
    bind_in_range,
    default_route_address,
    enable_icmp_errors,
    read_icmp_errors,
    send_from_relay,
    set_dont_fragment,
    udp_socket,
)
from node.turn._tcp import PADDING, TcpClient
from node.turn.credentials import (
    ChainedUsers,
    ConfigUsers,
    RestSecrets,
    TurnCredential,
    UserSource,
    issue_rest_credential,
    turn_uris,
)
from node.turn.policy import PeerPolicy
from node.turn.probe import ProbeReport, StunProber
from node.turn.settings import TurnSettings
from node.turn.state import Allocation, ChannelBinding, Limits, Relay, TurnState
from wire.stun import (
    CHANNEL_MAX,
    CHANNEL_MAX_RFC5766,
    AddressFamily,
    ChannelDataFrame,
    SecurityFeature,
    StreamDecoder,
    StunDecodeError,
)

log = logging.getLogger("asgard.turn")  # the node's logger tree (node.logs), structured fields


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log with structured `fields` the way `node.logs.event` does."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields}, stacklevel=2)


_CHANNEL_HEADER = struct.Struct("!HH")
_DRAIN_BATCH = 64
_RECV_BYTES = 65_536
_COLD_FIELDS = (
    "enabled", "host", "extra_hosts", "port", "udp", "tcp", "realm", "relay_ipv4", "relay_ipv6",
    "external_ipv4", "external_ipv6", "public_host", "relay_port_min", "relay_port_max",
    "udp_buffer_bytes", "relay_thread", "rfc5766_channels", "tcp_max_connections", "tcp_idle_timeout_s",
    "tcp_write_timeout_s", "tcp_send_queue_frames", "max_stream_frame_bytes",
)  # fmt: skip


@dataclass(frozen=True)
class TurnAddresses:
    """Where the service listens and which relay addresses it announces."""

    udp: list[tuple[str, int]]
    tcp: list[tuple[str, int]]
    relay: dict[str, str]


@dataclass(frozen=True)
class TurnStatistics:
    """Metrics for `/api/v1/admin/stats` and `/metrics`."""

    allocations: int
    permissions: int
    channels: int
    reservations: int
    tcp_connections: int
    relayed: dict[str, int]
    refusals: dict[str, int]
    drops: dict[str, int]
    probe: ProbeReport | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "allocations": self.allocations,
            "permissions": self.permissions,
            "channels": self.channels,
            "reservations": self.reservations,
            "tcp_connections": self.tcp_connections,
            "relayed": dict(self.relayed),
            "refusals": dict(self.refusals),
            "drops": dict(self.drops),
            "probe": None if self.probe is None else self.probe.as_dict(),
        }


class UdpListener:
    """A client-facing UDP socket; also the 5-tuple tag of allocations made through it."""

    __slots__ = ("address", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]


def _policy(settings: TurnSettings) -> PeerPolicy:
    return PeerPolicy(
        allow=settings.peer_allow, deny=settings.peer_deny, allow_loopback=settings.allow_loopback_peers
    )


def _max_channel(settings: TurnSettings) -> int:
    return CHANNEL_MAX_RFC5766 if settings.rfc5766_channels else CHANNEL_MAX


def _limits(settings: TurnSettings) -> Limits:
    return Limits(
        per_user=settings.max_allocations_per_user,
        total=settings.max_allocations_total,
        permissions=settings.max_permissions_per_allocation,
        channels=settings.max_channels_per_allocation,
        bandwidth_bytes_per_s=settings.bandwidth_limit_bytes_per_s,
    )


class TurnService:
    """STUN/TURN server. Start with `await nursery.start(service.serve)`."""

    def __init__(
        self,
        settings: TurnSettings,
        *,
        users: UserSource | None = None,
        default_host: str = "0.0.0.0",  # noqa: S104
    ) -> None:
        self._settings = settings
        self._default_host = default_host
        self._extra_users = users
        self._rest = RestSecrets([s.get_secret_value() for s in settings.rest_secrets])
        self._state = TurnState(_limits(settings))
        features = SecurityFeature.PASSWORD_ALGORITHMS | SecurityFeature.USERNAME_ANONYMITY
        auth = Authenticator(
            realm=settings.realm,
            nonces=NonceIssuer(lifetime_s=settings.nonce_lifetime_s, features=features),
            users=self._user_source(settings),
            rest=self._rest,
        )
        self._protocol = TurnProtocol(
            self._state, auth, _policy(settings), self._protocol_config(settings, set())
        )
        self._drops: Counter[str] = Counter()
        self._udp: list[UdpListener] = []
        self._tcp_clients: set[TcpClient] = set()
        self._scopes: dict[Relay, trio.CancelScope] = {}
        self._engine: RelayEngine | None = None
        self._engine_relays: set[Relay] = set()
        self._relay_hosts: dict[int, tuple[str, str]] = {}  # family -> (bind, announce)
        self._nursery: trio.Nursery | None = None
        self._timer_wake = trio.Event()
        self._armed = float("inf")
        self.prober = StunProber(settings.probe_servers, settings.probe_interval_s, settings.probe_timeout_s)
        self.addresses: TurnAddresses | None = None
        if settings.allow_loopback_peers:
            event(log, logging.WARNING, "TURN relays to loopback peers (allow_loopback_peers is on)")

    def _user_source(self, settings: TurnSettings) -> UserSource:
        config = ConfigUsers({k: v.get_secret_value() for k, v in settings.users.items()}, settings.realm)
        return config if self._extra_users is None else ChainedUsers([config, self._extra_users])

    @staticmethod
    def _protocol_config(settings: TurnSettings, families: Iterable[int]) -> ProtocolConfig:
        return ProtocolConfig(
            software=settings.software,
            default_lifetime_s=settings.default_lifetime_s,
            max_lifetime_s=settings.max_lifetime_s,
            families=frozenset(families),
            max_channel=_max_channel(settings),
        )

    # -- public API -----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[TurnAddresses] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and relay until cancelled; reports the bound addresses via `task_status`."""
        listeners, tcp_socks = self._bind_listeners()
        self._pick_relay_hosts()
        self._protocol.config = self._protocol_config(self._settings, self._relay_hosts)
        self.addresses = TurnAddresses(
            udp=[listener.address for listener in listeners],
            tcp=[s.getsockname()[:2] for s in tcp_socks],
            relay={
                ("ipv6" if f == AddressFamily.IPV6 else "ipv4"): a for f, (_, a) in self._relay_hosts.items()
            },
        )
        self._udp = listeners
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._settings.relay_thread and listeners:
                    self._engine = RelayEngine(self._state, self._protocol, self._post_control())
                    for listener in listeners:
                        self._engine.add_listener(listener, _max_channel(self._settings) >> 8)
                    nursery.start_soon(self._run_engine, self._engine)
                else:
                    for listener in listeners:
                        nursery.start_soon(self._udp_loop, listener)
                if tcp_socks:
                    trio_listeners = [
                        trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in tcp_socks
                    ]
                    tcp_socks = []
                    serve = partial(
                        trio.serve_listeners, self._tcp_handler, trio_listeners, handler_nursery=nursery
                    )
                    nursery.start_soon(serve)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self.prober.run)
                event(log, logging.INFO, "TURN listening", udp=self.addresses.udp, tcp=self.addresses.tcp)
                task_status.started(self.addresses)
        finally:
            self._nursery = None
            self._engine = None
            for sock in [*(listener.sock for listener in listeners), *tcp_socks]:
                sock.close()
            for relay, _ in self._state.reservations.values():
                relay.sock.close()

    def statistics(self) -> TurnStatistics:
        """Allocations, permissions, channels, relayed traffic, refusals and drops by reason."""
        counts = self._state.counts()
        drops = Counter(self._protocol.drops) + self._drops
        if self._engine is not None:
            drops.update(dict(self._engine.drops))
        drops["tcp-queue-full"] += sum(c.dropped for c in self._tcp_clients)
        return TurnStatistics(
            allocations=counts["allocations"],
            permissions=counts["permissions"],
            channels=counts["channels"],
            reservations=counts["reservations"],
            tcp_connections=len(self._tcp_clients),
            relayed={k: v for k, v in counts.items() if k.startswith("to_")},
            refusals=dict(self._protocol.refusals),
            drops={k: v for k, v in drops.items() if v},
            probe=self.prober.latest(),
        )

    def apply_settings(self, settings: TurnSettings) -> list[str]:
        """Apply the live fields of `settings`; return the names of changed fields that need a
        restart (those keep their old values)."""
        old = self._settings
        cold = [name for name in _COLD_FIELDS if getattr(settings, name) != getattr(old, name)]
        policy = _policy(settings)
        self._protocol.policy = policy
        revoked = self._state.revoke_peers(lambda host: not policy.allows(host))
        self._state.limits = _limits(settings)
        self._protocol.auth.users = self._user_source(old.model_copy(update={"users": settings.users}))
        self._rest.update(
            [s.get_secret_value() for s in settings.rest_secrets], time.time(), settings.rest_secret_grace_s
        )
        self._protocol.auth.nonces.lifetime_s = settings.nonce_lifetime_s
        self._protocol.config = self._protocol_config(settings, self._relay_hosts)
        self.prober.configure(settings.probe_servers, settings.probe_interval_s, settings.probe_timeout_s)
        if settings.allow_loopback_peers and not old.allow_loopback_peers:
            event(log, logging.WARNING, "TURN relays to loopback peers (allow_loopback_peers is on)")
        self._settings = settings.model_copy(update={name: getattr(old, name) for name in cold})
        event(log, logging.INFO, "TURN settings applied", revoked_permissions=revoked, restart_needed=cold)
        return cold

    def issue_credential(self, user: str, *, ttl_s: int | None = None) -> TurnCredential:
        """A TURN REST credential for `user` (a device id) and the URIs to use it with.

        Raises:
            InvalidInput: a bad user name.
            Unavailable: no REST secret is configured or the service is not listening.
        """
        if self.addresses is None:
            raise Unavailable("the TURN service is not running")
        secret = self._rest.current[0] if self._rest.current else ""
        host = self._settings.public_host or self.addresses.relay.get("ipv4") or self.addresses.udp[0][0]
        port = (self.addresses.udp or self.addresses.tcp)[0][1]
        uris = turn_uris(host, port, udp=bool(self.addresses.udp), tcp=bool(self.addresses.tcp))
        ttl = ttl_s if ttl_s is not None else self._settings.credential_ttl_s
        return issue_rest_credential(
            secret, user, ttl_s=ttl, unix_now=time.time(), realm=self._settings.realm, uris=uris
        )

    # -- binding --------------------------------------------------------------------------------

    def _hosts(self) -> list[str]:
        return [self._settings.host or self._default_host, *self._settings.extra_hosts]

    def _bind_listeners(self) -> tuple[list[UdpListener], list[socket.socket]]:
        for _ in range(8):  # port 0: the UDP port picked first may be taken for TCP; try again
            try:
                return self._bind_once()
            except OSError as exc:
                if self._settings.port != 0 or exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")

    def _bind_once(self) -> tuple[list[UdpListener], list[socket.socket]]:
        port = self._settings.port
        udp: list[socket.socket] = []
        tcp: list[socket.socket] = []
        try:
            for host in self._hosts():
                af = socket.AF_INET6 if ":" in host else socket.AF_INET
                mine: list[socket.socket] = []
                try:
                    if self._settings.udp:
                        mine.append(udp_socket(af, self._settings.udp_buffer_bytes))
                        mine[-1].bind((host, port))
                        port = port or mine[-1].getsockname()[1]
                    if self._settings.tcp:
                        mine.append(self._tcp_socket(af, host, port))
                        port = port or mine[-1].getsockname()[1]
                except OSError as exc:
                    for sock in mine:
                        sock.close()
                    if host == self._hosts()[0] or exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        raise
                    event(log, logging.WARNING, "TURN listen address skipped", host=host, error=str(exc))
                    continue
                udp += [s for s in mine if s.type == socket.SOCK_DGRAM]
                tcp += [s for s in mine if s.type == socket.SOCK_STREAM]
        except BaseException:
            for sock in [*udp, *tcp]:
                sock.close()
            raise
        return [UdpListener(s) for s in udp], tcp

    @staticmethod
    def _tcp_socket(af: int, host: str, port: int) -> socket.socket:
        sock = socket.socket(af, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(512)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _pick_relay_hosts(self) -> None:
        s = self._settings
        listen = [h for h in self._hosts() if h not in ("0.0.0.0", "::")]  # noqa: S104
        for family, af, configured, external in (
            (AddressFamily.IPV4, socket.AF_INET, s.relay_ipv4, s.external_ipv4),
            (AddressFamily.IPV6, socket.AF_INET6, s.relay_ipv6, s.external_ipv6),
        ):
            specific = [h for h in listen if (":" in h) == (af == socket.AF_INET6)]
            bind = configured or (specific[0] if specific else None)
            if bind is None and (af == socket.AF_INET or "::" in self._hosts()):
                bind = default_route_address(af)
            if bind is not None:
                self._relay_hosts[family] = (bind, external or bind)

    # -- client-facing UDP ----------------------------------------------------------------------

    async def _udp_loop(self, listener: UdpListener) -> None:
        sock = listener.sock
        recv = sock.recvfrom_into
        routes = self._state.routes_for(listener)
        buf = bytearray(_RECV_BYTES)
        view = memoryview(buf)
        drops = self._drops
        last_first = _max_channel(self._settings) >> 8
        budget = 0
        while True:
            try:
                size, addr = recv(buf)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                budget = 0
                continue
            except OSError:
                drops["recv-error"] += 1
                continue
            first = buf[0] if size else 0xFF
            if 0x40 <= first <= last_first and size >= 4:
                binding = routes.get((addr, first << 8 | buf[1]))
                length = buf[2] << 8 | buf[3]
                if binding is None or length + 4 > size:
                    drops["no-channel"] += 1
                else:
                    self._to_peer(binding, view[4 : 4 + length], length)
            elif first < 4:
                self._on_stun(bytes(view[:size]), Client(listener, addr, "udp"))
            else:
                drops["not-stun"] += 1
            budget += 1
            if budget >= _DRAIN_BATCH:
                budget = 0
                await trio.lowlevel.checkpoint()

    def _to_peer(self, binding: ChannelBinding, data: memoryview | bytes, length: int) -> None:
        allocation = binding.allocation
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(length, time.monotonic()):
            self._drops["bandwidth"] += 1
            return
        try:
            binding.send(data, binding.peer)
        except OSError:
            self._drops["send-failed"] += 1
            return
        allocation.to_peer_datagrams += 1
        allocation.to_peer_bytes += length

    def _deliver(self, tag: object, addr: Any, data: bytes) -> None:
        if isinstance(tag, UdpListener):
            try:
                tag.sock.sendto(data, addr)
            except OSError:
                self._drops["send-failed"] += 1
        elif isinstance(tag, TcpClient):
            tag.deliver(data)

    # -- STUN messages and outcomes -------------------------------------------------------------

    def _on_stun(self, data: bytes, client: Client) -> None:
        now = trio.current_time()
        outcome = self._protocol.handle(data, client, now, time.time())
        if outcome.pending is not None:
            outcome = self._protocol.complete_allocate(
                outcome.pending, self._open_relays(outcome.pending), now
            )
        if outcome.reply is not None:
            self._deliver(client.tag, client.addr, outcome.reply)
        self._carry_out(outcome)

    def _carry_out(self, outcome: Outcome) -> None:
        if outcome.created is not None:
            for relay in outcome.created.relays.values():
                self._start_relay(relay, outcome.created)
        for allocation in outcome.closed:
            self._close_allocation(allocation)
        for relay in outcome.release:
            self._close_relay(relay)
        if outcome.send is not None:
            self._send_indicated(outcome.send.allocation, outcome.send.relay, outcome.send.peer,
                                 outcome.send.data, outcome.send.dont_fragment)  # fmt: skip
        if self._state.next_deadline() < self._armed:
            self._timer_wake.set()

    def _open_relays(self, pending: PendingAllocate) -> OpenedRelays:
        opened = OpenedRelays()
        primary = pending.families[0]
        s = self._settings
        for family in pending.families:
            hosts = self._relay_hosts.get(family)
            if hosts is None:
                opened.failed[family] = 440
                continue
            first = family == primary
            try:
                bound = bind_in_range(
                    AF_OF_FAMILY[AddressFamily(family)], hosts[0], s.relay_port_min, s.relay_port_max,
                    s.udp_buffer_bytes, even=pending.even_port and first,
                    reserve_next=pending.reserve_next and first,
                )  # fmt: skip
            except OSError as exc:
                event(log, logging.WARNING, "TURN relay socket failed", error=str(exc))
                bound = None
            if bound is None:
                opened.failed[family] = 508
                continue
            sock, spare = bound
            opened.relays[family] = Relay(family, (hosts[1], sock.getsockname()[1]), sock)
            if spare is not None:
                opened.reserved = Relay(family, (hosts[1], spare.getsockname()[1]), spare)
        return opened

    def _send_indicated(
        self, allocation: Allocation, relay: Relay, peer: tuple[str, int], data: bytes, df: bool
    ) -> None:
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(len(data), time.monotonic()):
            self._drops["bandwidth"] += 1
            return
        try:
            send_from_relay(relay.sock, relay.family, peer, data, df and not allocation.dont_fragment)
        except OSError:
            self._drops["send-failed"] += 1
            return
        allocation.to_peer_datagrams += 1
        allocation.to_peer_bytes += len(data)

    # -- relays ---------------------------------------------------------------------------------

    def _start_relay(self, relay: Relay, allocation: Allocation) -> None:
        set_dont_fragment(relay.sock, relay.family, allocation.dont_fragment)
        enable_icmp_errors(relay.sock, relay.family)
        if self._engine is not None and isinstance(allocation.tag, UdpListener):
            self._engine_relays.add(relay)
            self._engine.add_relay(relay, allocation)
            return
        scope = trio.CancelScope()
        self._scopes[relay] = scope
        if self._nursery is None:
            scope.cancel()
            relay.sock.close()
            return
        self._nursery.start_soon(self._relay_loop, relay, allocation, scope)

    def _close_relay(self, relay: Relay) -> None:
        if relay in self._engine_relays:
            self._engine_relays.discard(relay)
            if self._engine is not None:
                self._engine.remove(relay.sock)
            return
        scope = self._scopes.pop(relay, None)
        if scope is None:
            relay.sock.close()
        else:
            scope.cancel()  # the relay task closes the socket

    def _close_allocation(self, allocation: Allocation) -> None:
        for relay in allocation.relays.values():
            self._close_relay(relay)

    async def _relay_loop(self, relay: Relay, allocation: Allocation, scope: trio.CancelScope) -> None:
        sock: socket.socket = relay.sock
        try:
            with scope:
                await self._relay_drain(sock, relay, allocation)
        finally:
            sock.close()

    async def _relay_drain(self, sock: socket.socket, relay: Relay, allocation: Allocation) -> None:
        recv = sock.recvfrom_into
        buf = bytearray(4 + _RECV_BYTES)
        view = memoryview(buf)
        payload = view[4:]
        pack = _CHANNEL_HEADER.pack_into
        by_peer, permissions = allocation.channel_by_peer, allocation.permissions
        tag, client_addr = allocation.tag, allocation.client_addr
        udp_send = tag.sock.sendto if isinstance(tag, UdpListener) else None
        tcp_client = tag if isinstance(tag, TcpClient) else None
        v6 = relay.family == AddressFamily.IPV6
        drops = self._drops
        budget = 0
        woke = False
        while True:
            try:
                size, peer = recv(payload)
            except BlockingIOError:
                if woke:
                    self._on_icmp(sock, allocation)
                await trio.lowlevel.wait_readable(sock)
                woke, budget = True, 0
                continue
            except OSError:
                self._on_icmp(sock, allocation)
                continue
            woke = False
            if v6:
                peer = (peer[0], peer[1])
            channel = by_peer.get(peer)
            bucket = allocation.bucket
            if bucket is not None and not bucket.take(size, time.monotonic()):
                drops["bandwidth"] += 1
            elif channel is not None:
                pack(buf, 0, channel, size)
                if udp_send is not None:
                    try:
                        udp_send(view[: 4 + size], client_addr)
                    except OSError:
                        drops["send-failed"] += 1
                        continue
                elif tcp_client is None or not tcp_client.deliver(
                    bytes(view[: 4 + size]) + PADDING[size & 3]
                ):
                    continue
                allocation.to_client_datagrams += 1
                allocation.to_client_bytes += size
            elif peer[0] in permissions:
                self._deliver(tag, client_addr, self._protocol.data_indication(peer, payload[:size]))
                allocation.to_client_datagrams += 1
                allocation.to_client_bytes += size
            else:
                drops["no-permission"] += 1
            budget += 1
            if budget >= _DRAIN_BATCH:
                budget = 0
                await trio.lowlevel.checkpoint()

    def _on_icmp(self, sock: socket.socket, allocation: Allocation) -> None:
        for error in read_icmp_errors(sock):
            data = self._protocol.icmp_indication(
                allocation, error.peer, error.icmp_type, error.icmp_code, error.info
            )
            if data is not None:
                self._deliver(allocation.tag, allocation.client_addr, data)
                self._drops["icmp-forwarded"] += 1

    # -- the relay thread -----------------------------------------------------------------------

    def _post_control(self) -> Any:
        token = trio.lowlevel.current_trio_token()

        def post(batch: list[Control]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._on_control, batch)

        return post

    def _on_control(self, batch: list[Control]) -> None:
        for data, listener, addr in batch:
            self._on_stun(data, Client(listener, addr, "udp"))

    async def _run_engine(self, engine: RelayEngine) -> None:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        failure: list[BaseException] = []

        def body() -> None:
            try:
                engine.run()
            except BaseException as exc:
                failure.append(exc)
            finally:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(done.set)

        thread = threading.Thread(target=body, name="turn-relay", daemon=True)
        thread.start()
        try:
            await done.wait()
        finally:
            engine.stop()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
        if failure:
            raise failure[0]
        raise RuntimeError("the TURN relay thread stopped")

    # -- timers ---------------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            self._armed = self._state.next_deadline()
            with trio.move_on_at(self._armed):
                await self._timer_wake.wait()
            self._timer_wake = trio.Event()
            expired = self._state.expire(trio.current_time())
            for allocation in expired.allocations:
                self._close_allocation(allocation)
            for relay in expired.relays:
                self._close_relay(relay)

    # -- TCP clients ----------------------------------------------------------------------------

    async def _tcp_handler(self, stream: trio.SocketStream) -> None:
        if len(self._tcp_clients) >= self._settings.tcp_max_connections:
            self._drops["tcp-limit"] += 1
            await trio.aclose_forcefully(stream)
            return
        addr = stream.socket.getpeername()
        client = TcpClient(stream, (addr[0], addr[1]), self._settings.tcp_send_queue_frames)
        self._tcp_clients.add(client)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tcp_writer, client, nursery.cancel_scope)
                await self._tcp_reader(client)
                nursery.cancel_scope.cancel()
        finally:
            self._tcp_clients.discard(client)
            client.close_queue()
            for allocation in self._state.remove_tag(client):
                self._close_allocation(allocation)
            await trio.aclose_forcefully(stream)

    async def _tcp_writer(self, client: TcpClient, reader_scope: trio.CancelScope) -> None:
        await client.write_loop(self._settings.tcp_write_timeout_s)
        reader_scope.cancel()  # the peer stopped reading: close the connection

    async def _tcp_reader(self, client: TcpClient) -> None:
        decoder = StreamDecoder(
            max_frame_bytes=self._settings.max_stream_frame_bytes, max_channel=_max_channel(self._settings)
        )
        routes = self._state.routes_for(client)
        stun_client = Client(client, client.addr, "tcp")
        idle = self._settings.tcp_idle_timeout_s
        while True:
            allocation = self._state.allocation(client, client.addr)
            deadline = trio.current_time() + idle
            if allocation is not None:
                deadline = max(deadline, allocation.expiry)
            with trio.move_on_at(deadline) as scope:
                data = await client.stream.receive_some(_RECV_BYTES)
            if scope.cancelled_caught:
                self._drops["tcp-idle"] += 1
                return
            if not data:
                return
            try:
                decoder.receive_data(data)
                while (frame := decoder.next_frame()) is not None:
                    if isinstance(frame, ChannelDataFrame):
                        binding = routes.get((client.addr, frame.channel))
                        if binding is None:
                            self._drops["no-channel"] += 1
                        else:
                            self._to_peer(binding, frame.data, len(frame.data))
                    else:
                        self._on_stun(frame.data, stun_client)
            except StunDecodeError:
                self._drops["tcp-framing"] += 1
                return


async def serve_turn(
    settings: TurnSettings,
    *,
    users: UserSource | None = None,
    default_host: str = "0.0.0.0",  # noqa: S104
    task_status: trio.TaskStatus[TurnAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a `TurnService` for `settings` until cancelled (see `TurnService.serve`)."""
    await TurnService(settings, users=users, default_host=default_host).serve(task_status=task_status)
