"""The gRPC router as a Trio service: `RpcServer.serve` / `serve_rpc`.

Start-up: open the island (or use one given), build the handlers behind the gate, start grpclib's
server on the island and report the bound address with `task_status.started`. Shutdown (the
serving task is cancelled): every health status goes NOT_SERVING, the listening socket is closed
(no new connections), new calls on open connections are answered UNAVAILABLE, long-lived streams
are ended with UNAVAILABLE, unary calls in flight get up to `shutdown_grace_s` (within their own
deadline), then whatever is left is cancelled, every client connection is closed, the island loop
stops and its thread is joined.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import weakref
from typing import Any, Protocol

import grpclib.server
import trio
from grpclib.protocol import H2Protocol

from node.rpc import _health, _svc_locks, _svc_registry, _svc_routing
from node.rpc._codec import RouterCodec
from node.rpc._gate import Gate, Method
from node.rpc._health import HealthService, HealthState
from node.rpc._island import Island, open_island
from node.rpc._reflection import reflection_methods
from node.rpc.backend import Authenticator, RpcBackend
from node.rpc.settings import RpcSettings

log = logging.getLogger("asgard.rpc")
SERVICE_NAMES = (
    _svc_registry.SERVICE,
    _svc_routing.ROUTING,
    _svc_routing.CAPABILITIES,
    _svc_locks.SERVICE,
    _health.SERVICE,
)
_CLOSE_TIMEOUT_S = 2.0
_HANDSHAKE_BYTES = 24 + 9
"""The client connection preface (RFC 9113 §3.4) and the header of the SETTINGS frame after it."""
_BACKLOG = 128


class _Service(Protocol):
    def methods(self) -> list[Method]: ...


class _Mapping:
    """Something grpclib's Server accepts as a handler: it only calls `__mapping__`."""

    def __init__(self, mapping: dict[str, grpclib.const.Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping


class _Admitted(H2Protocol):
    """grpclib's protocol for one connection, admitted only while the server holds fewer than
    `max_connections`: one more is closed on arrival, before it costs an HTTP/2 state machine.
    An admitted connection that has not sent the HTTP/2 preface and a frame header (the
    SETTINGS every client sends first) within `handshake_timeout_s` is closed too, so a socket
    that says nothing cannot keep a slot."""

    def __init__(self, server: _Server, made: H2Protocol) -> None:
        # `made` is grpclib's own protocol (its handler registered with the server); this one
        # takes its parts.
        super().__init__(made.handler, made.config, made.h2_config)
        self._server = server
        self._admitted = False
        self._handshake: asyncio.TimerHandle | None = None
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if server.open_connections >= server.max_connections:
            server.refused_connections += 1
            self.handler.close()  # nothing ran on it; grpclib forgets the handler
            transport.close()  # nothing was written: the peer reads the end at once
            return
        self._admitted = True
        server.open_connections += 1
        loop = asyncio.get_running_loop()
        self._handshake = loop.call_later(server.handshake_timeout_s, self._handshake_due, transport)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._handshake is not None:
            self._received += len(data)
            if self._received >= _HANDSHAKE_BYTES:
                self._handshake.cancel()
                self._handshake = None
        super().data_received(data)

    def _handshake_due(self, transport: asyncio.BaseTransport) -> None:
        self._handshake = None
        if self._admitted:
            self._server.handshake_timeouts += 1
            transport.close()  # connection_lost follows and frees the slot

    def pause_writing(self) -> None:
        if self._admitted:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            super().resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._handshake is not None:
            self._handshake.cancel()
            self._handshake = None
        if self._admitted:
            self._admitted = False
            self._server.open_connections -= 1
            super().connection_lost(exc)


class _Server(grpclib.server.Server):
    """grpclib's server, remembering its connections so shutdown can close them, and holding at
    most `max_connections` of them (island thread)."""

    def __init__(self, handlers: list[Any], settings: RpcSettings) -> None:
        super().__init__(handlers, codec=RouterCodec())
        self.protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()
        self.max_connections = settings.max_connections
        self.handshake_timeout_s = settings.handshake_timeout_s
        self.open_connections = 0
        self.refused_connections = 0
        self.handshake_timeouts = 0

    def _protocol_factory(self) -> H2Protocol:
        protocol = _Admitted(self, super()._protocol_factory())
        self.protocols.add(protocol)
        return protocol

    def stop_accepting(self) -> None:
        # grpclib 0.4 has no public way to stop listening without cancelling every call.
        if self._server is not None:
            self._server.close()

    def close_connections(self) -> None:
        for protocol in list(self.protocols):
            processor = getattr(protocol, "processor", None)
            if processor is not None:
                processor.close("the server stopped")

    def bound_address(self) -> tuple[str, int]:
        sockets = getattr(self._server, "sockets", None)
        assert sockets, "the server is not listening"
        host, port = sockets[0].getsockname()[:2]
        return str(host), int(port)


class RpcServer:
    """The gRPC router; `serve` runs it, `apply_settings` changes live settings, `health` sets
    the per-service statuses reported by grpc.health.v1."""

    def __init__(
        self,
        settings: RpcSettings,
        backend: RpcBackend,
        authenticator: Authenticator,
        *,
        health: HealthState | None = None,
        island: Island | None = None,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._authenticator = authenticator
        self._island = island
        self.health = health if health is not None else HealthState()
        self._health_service = HealthService(self.health, settings.public_health)
        self._gate: Gate | None = None
        self._server: _Server | None = None
        self.address: tuple[str, int] | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; reports the bound (host, port) when listening."""
        if self._island is not None:
            await self._serve_on(self._island, task_status)
            return
        settings = self._settings
        async with open_island(
            name="asgard-rpc",
            max_in_flight=settings.max_in_flight,
            window=settings.stream_window,
            stop_timeout_s=settings.stop_timeout_s,
        ) as island:
            await self._serve_on(island, task_status)

    @property
    def island(self) -> Island | None:
        """The island the server runs on (None before `serve`)."""
        return self._island

    def apply_settings(self, settings: RpcSettings) -> None:
        """Apply the live fields of `settings` (see `node.rpc.settings`); call from Trio."""
        self._settings = settings
        self._health_service.public = settings.public_health
        if self._gate is not None and self._island is not None:
            self._island.call_soon(self._apply_on_island, settings)

    def _apply_on_island(self, settings: RpcSettings) -> None:
        if self._gate is not None:
            self._gate.apply_settings(settings)
        if self._server is not None:
            self._server.max_connections = settings.max_connections
            self._server.handshake_timeout_s = settings.handshake_timeout_s

    def statistics(self) -> dict[str, int]:
        """Bridge counters, calls in the gate, client connections open and refused."""
        stats = {} if self._island is None else self._island.statistics()
        if self._gate is not None:
            stats["active_calls"] = self._gate.active_calls()
        server = self._server
        if server is not None:  # plain ints the island updates: a read from Trio is safe
            stats["connections_open"] = server.open_connections
            stats["connections_refused"] = server.refused_connections
            stats["handshake_timeouts"] = server.handshake_timeouts
        return stats

    async def _serve_on(self, island: Island, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        self._island = island
        self._gate = Gate(island.bridge, self._authenticator, self._settings)
        island.call_soon(self._gate.apply_settings, self._settings)  # bounds of a shared island
        methods = self._methods()
        context = self._ssl_context()
        sock = await self._listen()
        try:
            self.address = await island.run(self._start, methods, context, sock)
        except BaseException:
            sock.close()
            raise
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, "serving")
        try:
            task_status.started(self.address)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._shutdown(island)
            self._gate = None

    async def _shutdown(self, island: Island) -> None:
        self.health.set_all("not_serving")
        grace = self._settings.shutdown_grace_s
        # Bounded on the island, in real time: a virtual Trio clock (autojump_clock) would end a
        # Trio-side deadline at once and leave the server open.
        if not await island.run(self._stop_within, grace, grace + 2 * _CLOSE_TIMEOUT_S):
            log.error("the gRPC server did not stop in time")

    def _methods(self) -> list[Method]:
        services: list[_Service] = [
            _svc_registry.RegistryService(self._backend),
            _svc_routing.RoutingService(self._backend),
            _svc_routing.CapabilitiesService(self._backend),
            _svc_locks.LockService(self._backend),
            self._health_service,
        ]
        methods = [m for service in services for m in service.methods()]
        if self._settings.reflection:
            methods += reflection_methods(list(SERVICE_NAMES))
        return methods

    async def _listen(self) -> socket.socket:
        # Bound here, not by uvloop's create_server(host, port): that resolves the host on
        # libuv's thread pool, whose four threads then live as long as the process.
        host = self._settings.host or "0.0.0.0"  # noqa: S104 - the lead resolves server.host
        infos = await trio.socket.getaddrinfo(
            host, self._settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self._settings
        if settings.tls_cert_path is None or settings.tls_key_path is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(settings.tls_cert_path, settings.tls_key_path)
        context.set_alpn_protocols(["h2"])  # gRPC clients insist on ALPN "h2"
        if settings.tls_client_ca_path is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(settings.tls_client_ca_path)
        return context

    # Island side ---------------------------------------------------------------------------
    async def _start(
        self, methods: list[Method], context: ssl.SSLContext | None, sock: socket.socket
    ) -> tuple[str, int]:
        assert self._gate is not None
        gate = self._gate
        mapping = _Mapping({m.name: gate.handler(m) for m in methods})
        server = _Server([mapping], self._settings)
        await server.start(sock=sock, ssl=context, backlog=_BACKLOG)
        self._server = server
        self.health.attach(asyncio.get_running_loop())
        return server.bound_address()

    async def _stop_within(self, grace_s: float, limit_s: float) -> bool:
        try:
            await asyncio.wait_for(self._stop(grace_s), limit_s)
        except TimeoutError:
            return False
        return True

    async def _stop(self, grace_s: float) -> None:
        server, gate = self._server, self._gate
        assert server is not None
        assert gate is not None
        server.stop_accepting()
        await gate.drain(grace_s)
        server.close()
        server.close_connections()
        try:
            await asyncio.wait_for(server.wait_closed(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("gRPC handlers did not finish after cancellation")
        self.health.detach()


async def serve_rpc(
    settings: RpcSettings,
    backend: RpcBackend,
    authenticator: Authenticator,
    *,
    health: HealthState | None = None,
    island: Island | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gRPC router until cancelled (see `RpcServer`); reports the bound address."""
    server = RpcServer(settings, backend, authenticator, health=health, island=island)
    await server.serve(task_status=task_status)
