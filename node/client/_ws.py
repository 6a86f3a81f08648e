"""The device client's WebSocket connection: wsproto driven straight from the reading task.

trio-websocket runs a reader task of its own and hands every message to the application through a
memory channel, and wraps every send in a lock and a timeout of its own: two task switches and a
cancel scope per message on top of the protocol work. Here the one task that reads (the client's
`_read`) parses the bytes it receives with wsproto and has the message at once; senders share one
lock around a single `send_all`. Measured with the lock benchmark's client (acquire + release, one
node, old and new client alternating, load ≈ 3): client CPU per pair 787 → 693 µs (medians of 4),
p50 1341 → 1184 µs.

RFC 6455 rules kept: client frames are masked (wsproto), pings are answered, a close from the node
is answered and reported with its code, a message over `max_message_bytes` closes with 1009.
"""

from __future__ import annotations

import contextlib
from collections import deque

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECEIVE_BYTES = 1 << 16
CLOSE_ABNORMAL = 1006  # RFC 6455 §7.4.1: reported, never sent
CLOSE_TOO_BIG = 1009


class WsClosed(Exception):
    """The connection ended: the close code (1006 when it was lost without one) and reason."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}) {reason}".rstrip())
        self.code = code
        self.reason = reason


class WsRejected(Exception):
    """The node answered the upgrade request with an HTTP status instead of 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the upgrade was refused: HTTP {status}")
        self.status = status


class WsHandshakeError(Exception):
    """The opening handshake broke the protocol (or the session start did)."""


class ClientWebSocket:
    """One client connection over a connected Trio stream; one task receives, any task sends."""

    def __init__(self, stream: trio.abc.Stream, *, max_message_bytes: int) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._events: deque[Event] = deque()
        self._send_lock = trio.Lock()
        self._max = max_message_bytes
        self._parts: list[bytes | str] = []
        self._size = 0
        self.closed: WsClosed | None = None

    async def handshake(self, host: str, target: str, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the upgrade request and wait for the answer (the caller bounds it in time)."""
        await self._write(self._ws.send(Request(host=host, target=target, extra_headers=headers)))
        while True:
            event = await self._next_event()
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                raise WsRejected(event.status_code)
            raise WsHandshakeError(f"unexpected {type(event).__name__} during the handshake")

    async def send(self, message: bytes) -> None:
        """Send one binary message; WsClosed once the connection is closing or closed."""
        if self._ws.state is not ConnectionState.OPEN:
            raise self.closed or WsClosed(CLOSE_ABNORMAL, "not open")
        await self._write(self._ws.send(Message(data=message)))

    async def receive(self) -> bytes | str:
        """The next whole message; WsClosed (with the node's code) when the connection ends."""
        while True:
            event = await self._next_event()
            if isinstance(event, BytesMessage | TextMessage):
                self._size += len(event.data)
                if self._size > self._max:
                    await self.aclose(CLOSE_TOO_BIG, "message too big")
                    self.closed = WsClosed(CLOSE_TOO_BIG, f"a message over {self._max} bytes")
                    raise self.closed
                whole = self._collect(event)
                if whole is not None:
                    return whole
            elif isinstance(event, Ping):
                if self._ws.state is ConnectionState.OPEN:
                    await self._write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._write(self._ws.send(event.response()))
                self.closed = WsClosed(event.code, event.reason or "")
                raise self.closed

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the receiving task sees the node's answer as WsClosed.
        A connection that is already gone is simply closed (nothing is raised)."""
        if self._ws.state is ConnectionState.OPEN:
            with contextlib.suppress(WsClosed):
                await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))

    def _collect(self, event: BytesMessage | TextMessage) -> bytes | str | None:
        """The whole message once its last fragment is here (wsproto keeps text and binary apart)."""
        data = bytes(event.data) if isinstance(event.data, bytearray) else event.data
        if event.message_finished and not self._parts:
            self._size = 0
            return data
        self._parts.append(data)
        if not event.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(event, TextMessage):
            return "".join(p for p in parts if isinstance(p, str))
        return b"".join(p for p in parts if isinstance(p, bytes))

    async def _next_event(self) -> Event:
        while not self._events:
            data = await self._stream.receive_some(RECEIVE_BYTES)
            try:
                self._ws.receive_data(bytes(data) if data else None)
                self._events.extend(self._ws.events())
            except RemoteProtocolError as exc:
                raise WsHandshakeError(str(exc)) from None
            if not data and not self._events:
                self.closed = self.closed or WsClosed(CLOSE_ABNORMAL, "connection lost")
                raise self.closed
        return self._events.popleft()

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError) as exc:
            raise self.closed or WsClosed(CLOSE_ABNORMAL, str(exc)) from None
