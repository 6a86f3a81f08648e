"""The STUN/TURN service on Trio: UDP and TCP listeners on one port, UDP relay sockets, timers.

The control plane (every STUN request, the state, timers) runs here in Trio through the pure
`TurnProtocol`. UDP clients' relay traffic runs on the relay thread (`_engine.RelayEngine`) unless
`relay_thread` is off; TCP clients' relays and the thread-less mode use Trio tasks
(`_trio_relay.TrioRelay`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from node.errors import Unavailable
from node.turn._authn import Authenticator
from node.turn._engine import Control, RelayEngine, poster, run_engine
from node.turn._nonce import NonceIssuer
from node.turn._protocol import Client, OpenedRelays, Outcome, PendingAllocate, ProtocolConfig, TurnProtocol
from node.turn._sockets import (
    AF_OF_FAMILY,
    bind_in_range,
    bind_listeners,
    enable_icmp_errors,
    relay_hosts,
    send_from_relay,
    set_dont_fragment,
)
from node.turn._transports import TcpClient, UdpListener
from node.turn._trio_relay import TrioRelay
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
from node.turn.state import Allocation, Limits, Relay, TurnState
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
_RECV_BYTES = 65_536
_COLD_FIELDS = (
    "enabled", "host", "extra_hosts", "port", "udp", "tcp", "realm", "relay_ipv4", "relay_ipv6",
    "external_ipv4", "external_ipv6", "public_host", "relay_port_min", "relay_port_max",
    "udp_buffer_bytes", "relay_buffer_bytes", "relay_thread", "rfc5766_channels", "tcp_max_connections",
    "tcp_idle_timeout_s", "tcp_write_timeout_s", "tcp_send_queue_frames", "max_stream_frame_bytes",
)  # fmt: skip


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log with structured `fields` the way `node.logs.event` does."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields}, stacklevel=2)


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
            self._state, auth, _policy(settings), self._protocol_config(settings, ())
        )
        self._trio = TrioRelay(self._state, self._protocol, self._on_stun)
        self._drops: Counter[str] = Counter()
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
        s = self._settings
        hosts = [s.host or self._default_host, *s.extra_hosts]
        udp_socks, tcp_socks = bind_listeners(
            hosts, s.port, udp=s.udp, tcp=s.tcp, buffer_bytes=s.udp_buffer_bytes, on_skip=self._skipped
        )
        listeners = [UdpListener(sock) for sock in udp_socks]
        self._relay_hosts = relay_hosts(
            hosts,
            {AddressFamily.IPV4: s.relay_ipv4, AddressFamily.IPV6: s.relay_ipv6},
            {AddressFamily.IPV4: s.external_ipv4, AddressFamily.IPV6: s.external_ipv6},
        )
        self._protocol.config = self._protocol_config(s, self._relay_hosts)
        self.addresses = TurnAddresses(
            udp=[listener.address for listener in listeners],
            tcp=[sock.getsockname()[:2] for sock in tcp_socks],
            relay={
                ("ipv6" if f == AddressFamily.IPV6 else "ipv4"): a for f, (_, a) in self._relay_hosts.items()
            },
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._start_udp(nursery, listeners)
                if tcp_socks:
                    trio_listeners = [
                        trio.SocketListener(trio.socket.from_stdlib_socket(t)) for t in tcp_socks
                    ]
                    tcp_socks = []  # closed by trio from here on
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
        drops = Counter(self._protocol.drops) + self._drops + self._trio.drops
        icmp = self._trio.icmp_forwarded
        if self._engine is not None:
            drops.update(dict(self._engine.drops))
            icmp += self._engine.icmp_forwarded
        drops["tcp-queue-full"] += sum(c.dropped for c in self._tcp_clients)
        relayed = {k: v for k, v in counts.items() if k.startswith("to_")}
        relayed["icmp_to_client"] = icmp
        return TurnStatistics(
            allocations=counts["allocations"],
            permissions=counts["permissions"],
            channels=counts["channels"],
            reservations=counts["reservations"],
            tcp_connections=len(self._tcp_clients),
            relayed=relayed,
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
        if settings.bandwidth_limit_bytes_per_s != old.bandwidth_limit_bytes_per_s:
            self._state.set_bandwidth(settings.bandwidth_limit_bytes_per_s)
        self._protocol.auth.users = self._user_source(old.model_copy(update={"users": settings.users}))
        self._rest.update(
            [s.get_secret_value() for s in settings.rest_secrets], time.time(), settings.rest_secret_grace_s
        )
        self._protocol.auth.nonces.lifetime_s = settings.nonce_lifetime_s
        self._settings = settings.model_copy(update={name: getattr(old, name) for name in cold})
        self._protocol.config = self._protocol_config(self._settings, self._relay_hosts)
        self.prober.configure(settings.probe_servers, settings.probe_interval_s, settings.probe_timeout_s)
        if settings.allow_loopback_peers and not old.allow_loopback_peers:
            event(log, logging.WARNING, "TURN relays to loopback peers (allow_loopback_peers is on)")
        event(log, logging.INFO, "TURN settings applied", revoked_permissions=revoked, restart_needed=cold)
        return cold

    @property
    def realm(self) -> str:
        """The long-term credential realm in force."""
        return self._settings.realm

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

    # -- STUN messages and what follows from them -----------------------------------------------

    @staticmethod
    def _skipped(host: str, exc: OSError) -> None:
        event(log, logging.WARNING, "TURN listen address skipped", host=host, error=str(exc))

    def _on_control(self, batch: list[Control]) -> None:
        for data, listener, addr in batch:
            self._on_stun(data, Client(listener, addr, "udp"))
        if self._engine is not None:
            self._engine.done(len(batch))

    def _on_stun(self, data: bytes, client: Client) -> None:
        try:
            self._handle_stun(data, client)
        except Exception:  # untrusted input must not take the node down, even through a bug
            self._drops["internal-error"] += 1
            log.exception("TURN: error while handling a STUN message")

    def _handle_stun(self, data: bytes, client: Client) -> None:
        now = trio.current_time()
        outcome = self._protocol.handle(data, client, now, time.time())
        if outcome.pending is not None:
            outcome = self._protocol.complete_allocate(
                outcome.pending, self._open_relays(outcome.pending), now
            )
        if outcome.reply is not None:
            self._trio.deliver(client.tag, client.addr, outcome.reply)
        self._carry_out(outcome)

    def _carry_out(self, outcome: Outcome) -> None:
        if outcome.created is not None:
            for relay in outcome.created.relays.values():
                self._start_relay(relay, outcome.created)
        for allocation in outcome.closed:
            self._close_allocation(allocation)
        for relay in outcome.release:
            self._close_relay(relay)
        send = outcome.send
        if send is not None:
            self._send_indicated(send.allocation, send.relay, send.peer, send.data, send.dont_fragment)
        if self._state.next_deadline() < self._armed:
            self._timer_wake.set()

    def _open_relays(self, pending: PendingAllocate) -> OpenedRelays:
        opened = OpenedRelays()
        s = self._settings
        for index, family in enumerate(pending.families):
            hosts = self._relay_hosts.get(family)
            if hosts is None:
                opened.failed[family] = 440
                continue
            try:
                bound = bind_in_range(
                    AF_OF_FAMILY[AddressFamily(family)], hosts[0], s.relay_port_min, s.relay_port_max,
                    s.relay_buffer_bytes, even=pending.even_port and index == 0,
                    reserve_next=pending.reserve_next and index == 0,
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

    def _start_udp(self, nursery: trio.Nursery, listeners: list[UdpListener]) -> None:
        last_channel_byte = _max_channel(self._settings) >> 8
        if self._settings.relay_thread and listeners:
            self._engine = RelayEngine(self._state, self._protocol, poster(self._on_control))
            for listener in listeners:
                self._engine.add_listener(listener, last_channel_byte)
            nursery.start_soon(run_engine, self._engine)
            return
        for listener in listeners:
            nursery.start_soon(self._trio.serve_udp, listener, last_channel_byte)

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
        self._nursery.start_soon(self._trio.serve_relay, relay, allocation, scope)

    def _close_relay(self, relay: Relay) -> None:
        if relay in self._engine_relays:
            self._engine_relays.discard(relay)
            if self._engine is not None:
                self._engine.remove(relay.sock)  # the relay thread closes it
            return
        scope = self._scopes.pop(relay, None)
        if scope is None:
            relay.sock.close()
        else:
            scope.cancel()  # the relay task closes the socket

    def _close_allocation(self, allocation: Allocation) -> None:
        for relay in allocation.relays.values():
            self._close_relay(relay)

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
        try:
            addr = stream.socket.getpeername()
        except OSError:  # gone before we looked
            await trio.aclose_forcefully(stream)
            return
        client = TcpClient(stream, (addr[0], addr[1]), self._settings.tcp_send_queue_frames)
        self._tcp_clients.add(client)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tcp_writer, client, nursery.cancel_scope)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._tcp_reader(client)  # a reset connection just ends the session
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
                    if not isinstance(frame, ChannelDataFrame):
                        self._on_stun(frame.data, stun_client)
                    elif (binding := routes.get((client.addr, frame.channel))) is not None:
                        self._trio.to_peer(binding, frame.data, len(frame.data))
                    else:
                        self._drops["no-channel"] += 1
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
