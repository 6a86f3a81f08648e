"""Mesh peer links over gRPC (`asgard.v1.Mesh/Link`): the service, the dialer, and `PeerStream`,
the Trio-side handle of one link.

Theory of operation
-------------------
A link is one bidirectional gRPC stream; its two ends in this process live on two threads:

* `_IslandSide` (island thread) runs a reader and a writer on the grpclib stream. That is the
  accepting end, always (the rpc listener is grpclib's), and the dialling end when
  `open_peer_stream` is used; `node.mesh._dial` dials on Trio itself instead (no hand-over).
* `PeerStream` (Trio thread) is what `node.mesh` uses, whichever end is far (`FarEnd`):
  `send_nowait(message)` never waits and `set_handler(fn)` has every arriving message handed to
  `fn` synchronously, inside the bridge's batched hand-over (no task switch per message);
  `receive()` serves the handshake before that.

Both directions are credit-limited like the bridge's pipes (`_pipes`): Trio may have `window`
messages posted to the island that the writer has not yet written, and the island may have
`window` messages posted to Trio that Trio has not yet consumed (a handler consumes a message
when it returns True, or later with `consumed()`, for work that must wait, e.g. a store commit).
Beyond its credits, `send_nowait` keeps up to `queue_max` messages in a backlog and refuses more:
every queue is bounded, and a full one says so instead of blocking the router. The writer writes
whatever is waiting in one HTTP/2 write.

Ends: the Trio side ends a link with `close()` (what is queued is written first); the island side
reports the end of the stream, or the error that broke it, and `receive()` raises it (or
`trio.EndOfChannel`), the handler mode sets `closed`. The inbound service authenticates nothing
itself (the method is public in the gate): `node.mesh` runs the challenge-response on the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import grpclib.client
import grpclib.config
import trio
from grpclib.const import Cardinality

from node.errors import Unavailable
from node.rpc._bridge import JOB_CANCEL_WAIT_S, Bridge, StreamCall
from node.rpc._gate import CallContext, Method, Stream
from node.rpc._island import Island
from node.rpc._peer_codec import encode_batch
from node.rpc._peer_model import PeerMessage

log = logging.getLogger("asgard.rpc")

SERVICE = "asgard.v1.Mesh"
LINK = f"/{SERVICE}/Link"
_MAX_WRITE_BATCH = 128
_END_WAIT_S = 2.0

Handler = Callable[[PeerMessage], bool]
Post = Callable[..., None]
"""How `PeerStream` reaches its far end: `post(fn, *args)` runs `fn(*args)` there (a bridge post
to the island, or a plain call when the far end runs on Trio)."""
Accept = Callable[["PeerStream"], Awaitable[None]]


class FarEnd(Protocol):
    """What `PeerStream` asks of the end that writes and reads the connection."""

    def push(self, message: PeerMessage) -> None: ...

    def credit(self, count: int) -> None: ...

    def close(self) -> None: ...


class PeerStream:
    """One link from the Trio side (Trio thread only)."""

    def __init__(self, post: Post, *, window: int, queue_max: int, remote: str) -> None:
        self.remote = remote
        self._post_job = post
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
        self._ended = False
        self._error: BaseException | None = None
        self._closing = False
        self.closed = trio.Event()
        self.sent = 0
        self.received = 0

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
            self._post(message)
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

    def _post(self, message: PeerMessage) -> None:
        assert self._far is not None
        self._post_job(self._far.push, message)

    def far_credit(self, count: int) -> None:
        """The far end wrote `count` messages: their send credits come back (Trio thread)."""
        self._credits += count
        backlog = self._backlog
        while self._credits and backlog:
            self._credits -= 1
            self.sent += 1
            self._post(backlog.popleft())
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
        """Messages are dealt with: give their credits back to the island (in batches)."""
        self._consumed += count
        if self._consumed >= max(1, self._window // 2) and self._far is not None:
            self._post_job(self._far.credit, self._consumed)
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
        """A message arrived from the peer (called by the far end, on the Trio thread)."""
        self.received += 1
        if self._handler is not None and not self._inbox:
            self._dispatch(message)
            return
        self._inbox.append(message)
        if self._wait is not None:
            self._wait.set()
            self._wait = None

    def far_end(self, error: BaseException | None) -> None:
        """The link is over, cleanly or with `error` (called by the far end, on the Trio thread)."""
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
            self._post_job(self._far.close)


class _IslandSide:
    """The island end of a link (island thread only, except `push`/`credit`/`close` via posts)."""

    def __init__(self, bridge: Bridge, peer: PeerStream, window: int) -> None:
        self._bridge = bridge
        self._peer = peer
        self._outbox: deque[PeerMessage] = deque()
        self._credits = window
        self._credit_batch = max(1, window // 4)
        self._unreturned = 0  # written, credit not yet given back to Trio
        self._wake_writer: asyncio.Future[None] | None = None
        self._wake_reader: asyncio.Future[None] | None = None
        self._closing = False
        self._ended = False
        peer._far = self

    # Posted from Trio ------------------------------------------------------------------------
    def push(self, message: PeerMessage) -> None:
        self._outbox.append(message)
        self._wake(self._wake_writer)

    def credit(self, count: int) -> None:
        self._credits += count
        self._wake(self._wake_reader)

    def close(self) -> None:
        self._closing = True
        self._wake(self._wake_writer)

    @staticmethod
    def _wake(future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)

    # The link --------------------------------------------------------------------------------
    def end(self, error: BaseException | None) -> None:
        """Tell Trio the link is over (once)."""
        if not self._ended:
            self._ended = True
            self._bridge.to_trio(self._peer.far_end, error)

    async def run(self, stream: Any, write: Callable[[Any, list[PeerMessage]], Awaitable[None]]) -> None:
        """Read and write until the peer ends, Trio closes, or the stream breaks."""
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read(stream))
        writer = loop.create_task(self._write(stream, write))
        error: BaseException | None = None
        try:
            done, _ = await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    error = task.exception()
        finally:
            for task in (reader, writer):
                task.cancel()
            for task in (reader, writer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.end(None if error is None else _unavailable(error))

    async def _read(self, stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for message in stream:
            while not self._credits:
                self._wake_reader = loop.create_future()
                try:
                    await self._wake_reader
                finally:
                    self._wake_reader = None
            self._credits -= 1
            self._bridge.to_trio(self._peer.far_deliver, message)

    async def _write(self, stream: Any, write: Callable[[Any, list[PeerMessage]], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        while True:
            if not outbox:
                if self._closing:
                    return
                self._wake_writer = loop.create_future()
                try:
                    await self._wake_writer
                finally:
                    self._wake_writer = None
                continue
            batch = [outbox.popleft() for _ in range(min(len(outbox), _MAX_WRITE_BATCH))]
            await write(stream, batch)
            # Credits go back in batches (not a wake-up of Trio per message written): Trio still
            # holds window - credit_batch + 1 credits at worst, so it never waits on this.
            self._unreturned += len(batch)
            if self._unreturned >= self._credit_batch:
                self._bridge.to_trio(self._peer.far_credit, self._unreturned)
                self._unreturned = 0


def _unavailable(error: BaseException) -> Unavailable:
    if isinstance(error, Unavailable):
        return error
    return Unavailable(f"peer link broke: {type(error).__name__}: {error}")


# ---------------------------------------------------------------------- writing batches


async def _write_server(stream: Stream, messages: list[PeerMessage]) -> None:
    if not stream._send_initial_metadata_done:
        await stream.send_initial_metadata()
    await stream._stream.send_data(encode_batch(messages))
    stream._send_message_done = True
    stream._messages_sent += len(messages)


async def _write_client(stream: grpclib.client.Stream[Any, Any], messages: list[PeerMessage]) -> None:
    # grpclib 0.4 internals, as in node.rpc._streams: several messages in one DATA write.
    if not stream._send_request_done:
        await stream.send_request()
    await stream._stream.send_data(encode_batch(messages))
    stream._send_message_done = True
    stream._messages_sent += len(messages)


# ---------------------------------------------------------------------- the service (inbound)


class PeerService:
    """`asgard.v1.Mesh/Link` for the gRPC router: each inbound link is handed to `accept` (Trio)."""

    def __init__(self, island: Island, accept: Accept, *, window: int, queue_max: int) -> None:
        self._island = island
        self._accept = accept
        self._window = window
        self._queue_max = queue_max

    def methods(self) -> list[Method]:
        """The method, for the gate: public (the link authenticates itself, not with a token)."""
        return [
            Method(LINK, self.link, Cardinality.STREAM_STREAM, PeerMessage, PeerMessage, public=lambda: True)
        ]

    async def link(self, stream: Stream, ctx: CallContext) -> None:
        addr = stream.peer.addr() if stream.peer is not None else None
        remote = f"{addr[0]}:{addr[1]}" if addr else "unknown"
        bridge = self._island.bridge
        peer = PeerStream(bridge.to_island, window=self._window, queue_max=self._queue_max, remote=remote)
        side = _IslandSide(self._island.bridge, peer, self._window)
        call = ctx.open_stream(_run_accept, self._accept, peer, bidirectional=False)
        trio_done = asyncio.get_running_loop().create_task(_result(call))
        link = asyncio.get_running_loop().create_task(side.run(stream, _write_server))
        try:
            await asyncio.wait((trio_done, link), return_when=asyncio.FIRST_COMPLETED)
            if not link.done():  # Trio is done: let the writer flush its last words (e.g. a refusal)
                side.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(link), _END_WAIT_S)
        finally:
            link.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await link
            side.end(None)
            if not trio_done.done():
                with contextlib.suppress(TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(trio_done), _END_WAIT_S)
            trio_done.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await trio_done


async def _result(call: StreamCall[Any, Any]) -> None:
    await call.result()


async def _run_accept(
    _principal: object, accept: Accept, peer: PeerStream, down: trio.abc.SendChannel[Any]
) -> None:
    """The Trio side of an inbound link (a bridged stream call whose own pipe stays unused)."""
    await down.aclose()
    try:
        await accept(peer)
    finally:
        peer.close()


# ---------------------------------------------------------------------- the dialer (outbound)


def client_ssl(ca_path: str | None) -> ssl.SSLContext:
    """A TLS context for dialing peers (TLS 1.2+, ALPN h2)."""
    context = ssl.create_default_context(cafile=ca_path)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


@asynccontextmanager
async def open_peer_stream(
    island: Island,
    host: str,
    port: int,
    *,
    window: int,
    queue_max: int,
    connect_timeout_s: float,
    tls: ssl.SSLContext | None = None,
    tls_server_name: str | None = None,
) -> AsyncIterator[PeerStream]:
    """Dial `host:port` and open a link; the stream is closed when the block ends.

    The connection is made lazily by grpclib: a peer that cannot be reached shows up as
    `Unavailable` from the first `receive()`.
    """
    bridge = island.bridge
    peer = PeerStream(bridge.to_island, window=window, queue_max=queue_max, remote=f"{host}:{port}")
    side = _IslandSide(bridge, peer, window)
    job = bridge.start_island_job(_dial, side, host, port, connect_timeout_s, tls, tls_server_name)
    try:
        yield peer
    finally:
        peer.close()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_END_WAIT_S):
                await job.done.wait()
            bridge.cancel_island_job(job)
            with trio.move_on_after(JOB_CANCEL_WAIT_S):
                await job.done.wait()


async def _dial(
    side: _IslandSide,
    host: str,
    port: int,
    connect_timeout_s: float,
    tls: ssl.SSLContext | None,
    tls_server_name: str | None,
) -> None:
    config = grpclib.config.Configuration(ssl_target_name_override=tls_server_name)
    channel = grpclib.client.Channel(host, port, ssl=tls, config=config)
    try:
        async with channel.request(LINK, Cardinality.STREAM_STREAM, PeerMessage, PeerMessage) as stream:
            async with asyncio.timeout(connect_timeout_s):
                await stream.send_request()
            await side.run(stream, _write_client)
            with contextlib.suppress(Exception):
                if not stream._end_done:
                    await stream.end()
                async with asyncio.timeout(_END_WAIT_S):  # the server's answer to our end
                    async for _ in stream:
                        pass
    except asyncio.CancelledError:
        side.end(Unavailable("the link was closed"))
        raise
    except Exception as exc:
        side.end(_unavailable(exc))
    finally:
        side.end(None)
        channel.close()
