"""`PeerStream`, the Trio-side handle of one mesh peer link (`asgard.v1.Mesh/Link`), and the TLS
context the mesh dials with.

Theory of operation
-------------------
A link is one bidirectional gRPC stream on its own HTTP/2 connection, spoken on the Trio thread
by `node.mesh._h2end` (the dialling end `node.mesh._dial`, the accepting end `node.mesh._accept`).
That connection code is the `FarEnd` of a `PeerStream`; `node.mesh` sees only the `PeerStream`:

* `send_nowait(message)` never waits: within `window` credits the message goes to the far end at
  once (plain call, same thread), beyond them up to `queue_max` messages wait in a backlog and
  more are refused: every queue is bounded, and a full one says so instead of blocking the router.
  The far end gives credits back (`far_credit`) once it has encoded messages for the socket.
* `set_handler(fn)` has every arriving message handed to `fn` synchronously (no task switch per
  message); `receive()` serves the handshake before that. The far end may hand over `window`
  messages that the node has not consumed; then it stops reading the socket, so TCP and HTTP/2
  push back on the peer (a handler consumes a message when it returns True, or later with
  `consumed()`, for work that must wait, e.g. a store commit).

Ends: the Trio side ends a link with `close()` (what is queued is written first); the far end
reports the end of the stream, or the error that broke it (`far_end`), and `receive()` raises it
(or `trio.EndOfChannel`), the handler mode sets `closed`. The stream authenticates nothing
itself: `node.mesh` runs the challenge-response on it.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio

from node.mesh._peer_model import PeerMessage

log = logging.getLogger("asgard.mesh")

SERVICE = "asgard.v1.Mesh"
LINK = f"/{SERVICE}/Link"

Handler = Callable[[PeerMessage], bool]


class FarEnd(Protocol):
    """What `PeerStream` asks of the end that writes and reads the connection (Trio thread)."""

    def push(self, message: PeerMessage) -> None: ...

    def credit(self, count: int) -> None: ...

    def close(self) -> None: ...

    def authenticated(self) -> None: ...


class PeerStream:
    """One link from the Trio side (Trio thread only)."""

    def __init__(self, *, window: int, queue_max: int, remote: str) -> None:
        self.remote = remote
        self._window = window
        self._queue_max = queue_max
        self._far: FarEnd | None = None
        self._credits = window
        self._backlog: deque[PeerMessage] = deque()
        self._room: trio.Event | None = None
        self._inbox: deque[PeerMessage] = deque()
        self._wait: trio.Event | None = None
        self._handler: Handler | None = None
        self._consumed = 0
        self._credit_batch = max(1, window // 2)  # credits go back to the far end in batches
        self._ended = False
        self._error: BaseException | None = None
        self._closing = False
        self.closed = trio.Event()
        self.sent = 0
        self.received = 0

    def attach(self, far: FarEnd) -> None:
        """Connect the end that speaks the connection (before any message is sent)."""
        self._far = far

    # ------------------------------------------------------------------ sending
    @property
    def backlog(self) -> int:
        """Messages waiting behind the window."""
        return len(self._backlog)

    def send_nowait(self, message: PeerMessage) -> bool:
        """Queue `message` for the peer; False when the link is closed or its backlog is full."""
        if self._closing or self._ended:
            return False
        if self._credits and not self._backlog:
            self._credits -= 1
            self.sent += 1
            assert self._far is not None
            self._far.push(message)
            return True
        if len(self._backlog) >= self._queue_max:
            return False
        self._backlog.append(message)
        return True

    async def send(self, message: PeerMessage) -> None:
        """Queue `message`, waiting while the backlog is full; BrokenResourceError once closed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.send_nowait(message):
            if self._closing or self._ended:
                raise trio.BrokenResourceError("the peer link is closed")
            self._room = trio.Event()
            await self._room.wait()

    @property
    def sender_waiting(self) -> bool:
        """True while a task waits in `send` for room in the backlog."""
        return self._room is not None

    def far_credit(self, count: int) -> None:
        """The far end took `count` messages for the socket: their send credits come back."""
        self._credits += count
        backlog, far = self._backlog, self._far
        assert far is not None
        while self._credits and backlog:
            self._credits -= 1
            self.sent += 1
            far.push(backlog.popleft())
        if self._room is not None and len(backlog) < self._queue_max:
            self._room.set()
            self._room = None

    # ------------------------------------------------------------------ receiving
    def set_handler(self, handler: Handler | None) -> None:
        """Hand every arriving message to `handler` from now on (messages already here first).

        `handler(message)` runs on the Trio thread, must not wait and must not raise; it returns
        True when it is done with the message, False when it calls `consumed()` later.
        """
        self._handler = handler
        while handler is not None and self._inbox:
            self._dispatch(self._inbox.popleft())

    def consumed(self, count: int = 1) -> None:
        """Messages are dealt with: give their credits back to the far end (in batches)."""
        self._consumed += count
        if self._consumed >= self._credit_batch and self._far is not None:
            self._far.credit(self._consumed)
            self._consumed = 0

    async def receive(self) -> PeerMessage:
        """The next message (before a handler is set).

        Raises:
            trio.EndOfChannel: the peer ended the link.
            Unavailable: the link broke.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._inbox:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise trio.EndOfChannel
            self._wait = trio.Event()
            await self._wait.wait()
        self.consumed(1)
        return self._inbox.popleft()

    def _dispatch(self, message: PeerMessage) -> None:
        assert self._handler is not None
        try:
            done = self._handler(message)
        except Exception:
            log.exception("mesh link handler failed")
            done = True
        if done:
            self.consumed(1)

    def far_deliver(self, message: PeerMessage) -> None:
        """A message arrived from the peer (called by the far end)."""
        self.received += 1
        if self._handler is not None and not self._inbox:
            self._dispatch(message)
            return
        self._inbox.append(message)
        if self._wait is not None:
            self._wait.set()
            self._wait = None

    def far_end(self, error: BaseException | None) -> None:
        """The link is over, cleanly or with `error` (called by the far end)."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        for event in (self._wait, self._room):
            if event is not None:
                event.set()
        self._wait = self._room = None
        self.closed.set()

    # ------------------------------------------------------------------ ending
    @property
    def error(self) -> BaseException | None:
        """Why the link ended, when it broke (None while open or after a clean end)."""
        return self._error

    def close(self) -> None:
        """End the link: what is queued is written, then the stream ends (idempotent)."""
        if self._closing:
            return
        self._closing = True
        self._backlog.clear()
        if self._far is not None and not self._ended:
            self._far.close()

    def authenticated(self) -> None:
        """The challenge-response passed: the peer may send messages of the full size now."""
        if self._far is not None:
            self._far.authenticated()


def client_ssl(ca_path: str | None) -> ssl.SSLContext:
    """A TLS context for dialing peers (TLS 1.2+, ALPN h2)."""
    context = ssl.create_default_context(cafile=ca_path)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


def server_ssl(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A TLS context for the mesh listener (TLS 1.2+, ALPN h2; peers prove the cluster secret on
    the link, not with a client certificate)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    context.set_alpn_protocols(["h2"])
    return context
