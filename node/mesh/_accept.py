"""The mesh listener: peer links accepted on the Trio thread, the server end of
`asgard.v1.Mesh/Link` (`_h2end`), on its own TCP port (`[mesh] host`, `port`), TLS optional.

Theory of operation
-------------------
Everything a connection sends before it has proven the cluster secret is untrusted, so each
step is bounded:

* At most `max_connections` connections at once (accepted or still in their handshakes); one
  more is closed at once and counted (`rejected`).
* `handshake_timeout_s` from the TCP accept covers the TLS handshake (ALPN h2 required), the
  HTTP/2 preface and SETTINGS and the request's HEADERS; a connection without a valid request by
  then is closed (slowloris, garbage). After the request the mesh's challenge-response has the
  same deadline again (`node.mesh._links`), and an authenticated link is closed once it has been
  silent `dead_after_s`.
* The request must be `POST /asgard.v1.Mesh/Link` with `content-type: application/grpc...`:
  another method is answered HTTP 405, another content type HTTP 415, another path
  `grpc-status: 12` (UNIMPLEMENTED), each ending the connection. One stream per connection
  (SETTINGS_MAX_CONCURRENT_STREAMS 1): a further stream is reset with REFUSED_STREAM, and a
  connection that keeps opening them is closed. Header lists are limited to
  `MAX_HEADER_LIST_BYTES`, messages to `max_message_bytes` (an oversized one ends the link with
  `grpc-status: 8`, a malformed one with 13), HTTP/2 protocol errors end the connection with
  GOAWAY (h2).
* The accepted stream is answered with `:status 200` at once and handed to `accept` (the mesh:
  challenge-response, then the link) as a `PeerStream`; when `accept` returns the stream ends
  with trailers `grpc-status: 0`, after what was queued; when the dialler ends its side first,
  the link ends (EndOfChannel) and the trailers follow.
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h2.errors
import h2.events
import trio

from node.errors import Unavailable
from node.logs import event, logger
from node.mesh._h2end import LINK_ERRORS, PRE_AUTH_MESSAGE_BYTES, H2End, Oversized
from node.mesh._peer import LINK, PeerStream
from node.mesh._wire import accept_wire

log = logger("mesh")

Accept = Callable[[PeerStream], Awaitable[None]]
MAX_REFUSED_STREAMS = 8
_ACCEPT_RETRY_S = 0.1  # out of file descriptors: let others close theirs before accepting again
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """Bounds of the mesh listener (from `MeshSettings`)."""

    window: int
    queue_max: int
    max_message_bytes: int
    max_connections: int
    handshake_timeout_s: float
    pre_auth_message_bytes: int = PRE_AUTH_MESSAGE_BYTES
    """Largest message before the peer's challenge-response has passed."""


@dataclass(slots=True)
class ListenerStats:
    """Counters of the mesh listener."""

    accepted: int = 0
    rejected: int = 0  # over max_connections
    failed: int = 0  # closed before a valid request: TLS, preface, protocol error, timeout
    open: int = 0


class _AcceptedEnd(H2End):
    """The server end of an accepted link."""

    client_side = False
    linger = True

    def __init__(self, peer: PeerStream, limits: ListenerLimits, accept: Accept) -> None:
        super().__init__(peer, limits.window, limits.max_message_bytes, limits.pre_auth_message_bytes)
        self._accept = accept
        self._refused = 0
        self.requested = False

    def _start(self) -> None:
        """The server's preface is the SETTINGS frame `_settings` queued."""

    def _end_stream(self) -> None:
        assert self._stream_id is not None
        self._h2.send_headers(self._stream_id, [("grpc-status", "0")], end_stream=True)

    def _abort_stream(self, error: Unavailable) -> None:
        if self._stream_id is not None:
            status = "8" if isinstance(error, Oversized) else "13"  # RESOURCE_EXHAUSTED, INTERNAL
            trailers = [("grpc-status", status), ("grpc-message", str(error)[:200])]
            self._h2.send_headers(self._stream_id, trailers, end_stream=True)

    def _eof(self) -> None:
        if not self._stream_ended.is_set():
            raise Unavailable("the peer closed the connection")

    def _event(self, event: h2.events.Event) -> bool:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id == self._stream_id:  # the dialler ended its side: so does the link
                self.end(None)
                self.close()
        else:
            self._connection_event(event)
        return False

    def _request(self, stream_id: int, headers: list[tuple[str, str]] | list[tuple[bytes, bytes]]) -> None:
        conn = self._h2
        if self._stream_id is not None or self.requested:
            self._refused += 1
            if self._refused > MAX_REFUSED_STREAMS:
                raise Unavailable("the peer keeps opening streams (one link per connection)")
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.requested = True
        fields = {str(k): str(v) for k, v in headers}
        answer = _refusal(fields)
        if answer is not None:
            conn.send_headers(stream_id, answer, end_stream=True)
            self._stream_ended.set()  # the connection ends once the peer has read it
            return
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
        self._stream_id = stream_id
        self._rx_open = True
        if self._scope is not None:
            self._scope.deadline = float("inf")  # the mesh's challenge-response has its own
        self._owner_done = trio.Event()
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_link, self._owner_done)

    async def _serve_link(self, done: trio.Event) -> None:
        try:
            await self._accept(self._peer)
        except Exception:
            log.exception("mesh link failed")
        finally:
            self._peer.close()
            done.set()


def _refusal(fields: dict[str, str]) -> list[tuple[str, str]] | None:
    """The answer that ends a request which is not a link (None: it is one)."""
    if fields.get(":method") != "POST":
        return [(":status", "405")]
    if not fields.get("content-type", "").startswith("application/grpc"):
        return [(":status", "415")]
    if fields.get(":path") != LINK:
        path = fields.get(":path", "")[:100]
        return [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "12"),
                ("grpc-message", f"unknown method {path}")]  # fmt: skip
    return None


class MeshListener:
    """Accepts peer links and hands each to `accept` (see the module docstring)."""

    def __init__(self, accept: Accept, limits: ListenerLimits, tls: ssl.SSLContext | None) -> None:
        self._accept = accept
        self.limits = limits
        self._tls = tls
        self._accepting = trio.CancelScope()
        self._idle: trio.Event | None = None
        self.stats = ListenerStats()

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[str]) -> None:
        """Listen on `host:port` until cancelled; reports the bound `host:port`. After
        `stop_accepting` it runs on until every accepted connection has ended."""
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        task_status.started(_join(bound_host, bound_port))
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as loops:
                    for listener in listeners:
                        loops.start_soon(self._accept_loop, listener, connections)

    async def wait_idle(self) -> None:
        """Wait until no connection is open (each one counted in `stats` by then)."""
        while self.stats.open:
            self._idle = trio.Event()
            await self._idle.wait()

    def stop_accepting(self) -> None:
        """Close the listening sockets; links already accepted go on."""
        self._accepting.cancel()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _RESOURCE_ERRNOS:
                        raise
                    event(log, 40, "mesh listener cannot accept", error=str(exc))
                    await trio.sleep(_ACCEPT_RETRY_S)
                    continue
                if self.stats.open >= self.limits.max_connections:
                    self.stats.rejected += 1
                    stream.socket.close()
                    continue
                self.stats.open += 1
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            remote = _remote(stream)
            deadline = trio.current_time() + self.limits.handshake_timeout_s
            with trio.move_on_at(deadline) as scope:
                try:
                    wire = await accept_wire(stream, self._tls)
                except LINK_ERRORS as exc:
                    self._failed(remote, exc)
                    return
            if scope.cancelled_caught:
                self._failed(remote, Unavailable("the TLS handshake timed out"))
                return
            peer = PeerStream(window=self.limits.window, queue_max=self.limits.queue_max, remote=remote)
            end = _AcceptedEnd(peer, self.limits, self._accept)
            await end.run(wire, deadline=deadline)
            if end.linked:
                self.stats.accepted += 1
            else:
                self._failed(remote, peer.error or Unavailable("no request"))
        finally:
            self.stats.open -= 1
            if not self.stats.open and self._idle is not None:
                self._idle.set()

    def _failed(self, remote: str, error: BaseException) -> None:
        self.stats.failed += 1
        event(log, 20, "mesh connection closed before a link", remote=remote, error=str(error)[:200])


def _remote(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "unknown"
    return _join(host, port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
