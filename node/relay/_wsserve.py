"""Accept WebSocket connections on a listening socket: handshake with a deadline, then a handler.

`serve_ws(handler, engine, host=..., port=...)` runs the accept loop inside its own nursery and
calls `handler(WsRequest)` in one task per connection. The handler looks at `request.request`
(path, Origin, bearer token, subprotocols) and either `await request.reject(status)` or
`conn = await request.accept()`, then uses `conn.receive_batch()` / `conn.send_batch()` until it
returns. When the handler returns the connection is closed with 1000 (1011 if it raised, 1001
without waiting if the server is being cancelled).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket as stdlib_socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import trio

from node.relay._wsconn import ConnectionClosed, WsConnection
from node.relay._wssettings import WsSettings
from wire import DecodeError
from wire.ws import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    HandshakeRequest,
    Unmasker,
    decode_handshake_untrusted,
    encode_handshake_accept,
    encode_handshake_reject,
    unmask_python,
)

# The same logger as node.logs.logger("relay.ws"); not imported from there because importing
# node.logs before node.config is circular at the moment (node.logs -> node.config -> node.logs).
log = logging.getLogger("asgard.relay.ws")

_ACCEPT_RETRY_S = 0.1  # pause when out of file descriptors or memory, as trio's serve_listeners
_ACCEPT_BATCH = 64  # connections accepted per wake-up of the listener
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def default_unmasker() -> Unmasker:
    """Return the C `apply_mask` of the `websockets` package when installed, else pure Python."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        return unmask_python
    return apply_mask


@dataclass(frozen=True, slots=True)
class WsEngineStatistics:
    """Counters of one listener."""

    connections_open: int
    connections_accepted: int
    handshakes_failed: int
    handshakes_rejected: int
    accept_errors: int


class WsEngine:
    """What the connections of a listener share: settings, one read buffer, the unmasker.

    The read buffer is shared because every read is decoded synchronously before the next
    checkpoint, so an idle connection holds no receive buffer at all.
    """

    def __init__(self, settings: WsSettings | None = None, *, unmask: Unmasker | None = None):
        self.settings = settings or WsSettings()
        self.unmask = unmask or default_unmasker()
        self.receive_buffer = bytearray(self.settings.receive_buffer_bytes)
        self.receive_view = memoryview(self.receive_buffer)
        self.connections: set[WsConnection] = set()  # open connections, for the keepalive sweep
        # open, accepted, handshake failed, rejected, accept errors
        self._counts = [0, 0, 0, 0, 0]

    def apply_settings(self, settings: WsSettings) -> None:
        """Apply new settings live; buffer size and backlog keep their values until restart.

        `max_message_bytes` applies to connections opened afterwards.
        """
        self.settings = settings.model_copy(
            update={
                "receive_buffer_bytes": self.settings.receive_buffer_bytes,
                "backlog": self.settings.backlog,
                "max_handshake_bytes": self.settings.max_handshake_bytes,
            }
        )

    async def run_keepalive(self) -> NoReturn:
        """Sweep the open connections for keepalive, a few times per ping interval (one task)."""
        while True:
            s = self.settings
            await trio.sleep(max(0.05, min(s.ping_interval_s, s.pong_timeout_s) / 4))
            now = trio.current_time()
            for conn in list(self.connections):
                conn.check_keepalive(now)

    def statistics(self) -> WsEngineStatistics:
        """Return the listener's counters."""
        c = self._counts
        return WsEngineStatistics(c[0], c[1], c[2], c[3], c[4])


class WsRequest:
    """A connection whose upgrade request has been read; the handler accepts or rejects it."""

    __slots__ = ("_engine", "_leftover", "_sock", "connection", "peer", "rejected", "request")

    def __init__(
        self,
        sock: stdlib_socket.socket,
        engine: WsEngine,
        request: HandshakeRequest,
        leftover: bytes,
        peer: Any,
    ) -> None:
        self._sock = sock
        self._engine = engine
        self._leftover = leftover
        self.request = request
        self.peer = peer
        self.connection: WsConnection | None = None
        self.rejected = False

    async def accept(
        self, *, subprotocol: str | None = None, extra_headers: tuple[tuple[str, str], ...] = ()
    ) -> WsConnection:
        """Send `101 Switching Protocols` and return the open connection."""
        self._check_undecided()
        answer = encode_handshake_accept(self.request, subprotocol=subprotocol, extra_headers=extra_headers)
        await send_all_with_deadline(self._sock, answer, self._engine.settings.write_timeout_s)
        self.connection = WsConnection(
            self._sock, self._engine, self.request, leftover=self._leftover, peer=self.peer
        )
        return self.connection

    async def reject(
        self, status: int, *, body: bytes = b"", extra_headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """Answer with an HTTP error (401, 403, 404, ...) and close the connection."""
        self._check_undecided()
        self.rejected = True
        self._engine._counts[3] += 1
        answer = encode_handshake_reject(status, body=body, extra_headers=extra_headers)
        await send_all_with_deadline(self._sock, answer, self._engine.settings.write_timeout_s)

    def _check_undecided(self) -> None:
        if self.connection is not None or self.rejected:
            raise RuntimeError("this request was already accepted or rejected")


WsHandler = Callable[[WsRequest], Awaitable[None]]


async def send_all_with_deadline(sock: stdlib_socket.socket, data: bytes, timeout_s: float) -> None:
    """Write `data` to a non-blocking socket; raise `trio.TooSlowError` past the deadline."""
    view = memoryview(data)
    with trio.fail_after(timeout_s):
        while view:
            await trio.lowlevel.wait_writable(sock)
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                continue


async def read_handshake(sock: stdlib_socket.socket, engine: WsEngine) -> tuple[HandshakeRequest, bytes]:
    """Read the upgrade request; return it and any bytes that followed it.

    Raises `DecodeError` (hint = HTTP status) and `EOFError` when the peer went away.
    """
    limit = engine.settings.max_handshake_bytes
    buf = bytearray()
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            n = sock.recv_into(engine.receive_buffer, limit - len(buf))
        except BlockingIOError:
            continue
        except OSError as exc:
            raise EOFError(str(exc)) from None
        if n == 0:
            raise EOFError("peer closed during the handshake")
        buf += engine.receive_view[:n]
        parsed = decode_handshake_untrusted(buf, max_bytes=limit)
        if parsed is not None:
            request, used = parsed
            return request, bytes(buf[used:])


async def serve_ws(
    handler: WsHandler,
    engine: WsEngine,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on (host, port) and serve WebSocket connections until cancelled."""
    listener = _listen(host, port, engine.settings.backlog)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run_keepalive)
            task_status.started(listener.getsockname()[:2])
            while True:
                await trio.lowlevel.wait_readable(listener)
                await _accept_batch(listener, engine, handler, nursery)
    finally:
        trio.lowlevel.notify_closing(listener)
        listener.close()


def _listen(host: str, port: int, backlog: int) -> stdlib_socket.socket:
    family = stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET
    listener = stdlib_socket.socket(family, stdlib_socket.SOCK_STREAM)
    try:
        listener.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(backlog)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


async def _accept_batch(
    listener: stdlib_socket.socket, engine: WsEngine, handler: WsHandler, nursery: trio.Nursery
) -> None:
    for _ in range(_ACCEPT_BATCH):
        try:
            sock, peer = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            engine._counts[4] += 1
            await trio.sleep(_ACCEPT_RETRY_S)
            return
        sock.setblocking(False)
        sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        engine._counts[1] += 1
        nursery.start_soon(_serve_connection, sock, peer, engine, handler)


async def _serve_connection(
    sock: stdlib_socket.socket, peer: Any, engine: WsEngine, handler: WsHandler
) -> None:
    engine._counts[0] += 1
    try:
        pending = await _handshake(sock, peer, engine)
        if pending is not None:
            await _run_handler(pending, handler)
    finally:
        engine._counts[0] -= 1
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def _handshake(sock: stdlib_socket.socket, peer: Any, engine: WsEngine) -> WsRequest | None:
    try:
        with trio.fail_after(engine.settings.handshake_timeout_s):
            request, leftover = await read_handshake(sock, engine)
    except DecodeError as exc:
        engine._counts[2] += 1
        await _answer_quietly(sock, encode_handshake_reject(exc.hint or 400), engine)
        return None
    except (EOFError, trio.TooSlowError):
        engine._counts[2] += 1
        return None
    return WsRequest(sock, engine, request, leftover, peer)


async def _answer_quietly(sock: stdlib_socket.socket, data: bytes, engine: WsEngine) -> None:
    with contextlib.suppress(OSError, trio.TooSlowError):
        await send_all_with_deadline(sock, data, engine.settings.write_timeout_s)


async def _run_handler(pending: WsRequest, handler: WsHandler) -> None:
    code = CLOSE_NORMAL
    try:
        await handler(pending)
    except ConnectionClosed:
        pass
    except (OSError, trio.TooSlowError) as exc:  # the peer vanished or stalled mid-handshake
        log.debug("WebSocket connection from %s failed: %r", pending.peer, exc)
        code = CLOSE_INTERNAL_ERROR
    except Exception:
        log.exception("WebSocket handler failed for %s %s", pending.peer, pending.request.path)
        code = CLOSE_INTERNAL_ERROR
    except BaseException:  # cancellation: say "going away" without waiting, then unwind
        if pending.connection is not None:
            pending.connection.close_nowait(CLOSE_GOING_AWAY, "server shutting down")
        raise
    if pending.connection is not None:
        await pending.connection.aclose(code)
    elif not pending.rejected:
        await _answer_quietly(pending._sock, encode_handshake_reject(500), pending._engine)
