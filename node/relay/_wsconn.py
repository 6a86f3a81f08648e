"""One accepted WebSocket connection driven by Trio: batched reads, coalesced writes.

Why not trio-websocket on the hot path: it spends a task and a channel hop per received message
and one `send` per message (spike §4: about 2x the per-message cost of `websockets` on uvloop).
Here a reader calls `receive_batch()`, which does one `recv_into` of the listener's shared
buffer and returns every complete message in it; a writer calls `send_batch()`, which puts all
frames (header, payload, header, payload, ...) into one `sendmsg` without copying payloads.

The socket is a non-blocking stdlib socket driven by `trio.lowlevel.wait_readable/writable`
rather than a `trio.socket`: Trio's socket methods yield to the scheduler after every successful
call, which costs a scheduler pass per read and per write on the hot path.

Threading model: one task reads (`receive_batch`), any number of tasks may write (`send_batch` is
serialised by a flag and a parking lot; the uncontended path does not yield). Pongs and close
replies are written by the reader through the same path. `send_batch_nowait` lets a router write
from its own task without ever waiting: it writes what the kernel takes and keeps the rest of a
cut frame (`write_pending`) for the next `send_batch`, which finishes it before anything else. The
same "tail" keeps a write that is cancelled half way from leaving a torn frame on the stream.

Keepalive has no per-connection task or timer: the engine's sweeper (`WsEngine.run_keepalive`)
calls `check_keepalive(now)` on every open connection; after `ping_interval_s` without a received
byte it sends a ping, and `pong_timeout_s` later, still without one, it closes with 1011. A
deadline cancel scope around each read would cost about 20 µs per message here (measured). The
reads do not even look at the clock: the sweep notices that the byte counter moved and takes its
own time as the last sign of life, so silence is measured from up to one sweep period (a quarter
of the shorter timer) after the last byte, and a read costs no clock call.

The hot path of `receive_batch` (a socket read whose messages are all binary) waits with
`wait_readable` on the file descriptor directly, reads, decodes and returns the decoder's list as
the batch, with no call per message and no helper coroutines in between (each await level is
resumed on every wake-up).
"""

from __future__ import annotations

import contextlib
import os
import socket as stdlib_socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from wire import DecodeError
from wire.ws import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    OP_PING,
    OP_PONG,
    Close,
    FrameDecoder,
    HandshakeRequest,
    Ping,
    WsEvent,
    encode_binary_header,
    encode_close,
    encode_control_frame,
)

if TYPE_CHECKING:
    from node.relay._wsserve import WsEngine

CLOSE_ABNORMAL = 1006  # RFC 6455 §7.1.5: reported locally, never sent
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_MAX_GREEDY_READS = 8  # consecutive reads without yielding before a forced checkpoint
# encode_binary_header's answers for payloads under 126 bytes, looked up inline on the hot path.
_SMALL_HEADERS = tuple(encode_binary_header(n) for n in range(126))


class ConnectionClosed(Exception):
    """The connection is closed; `code`/`reason` come from the close frame or the local cause."""

    def __init__(self, code: int, reason: str, *, local: bool) -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason
        self.local = local


@dataclass(frozen=True, slots=True)
class WsConnectionStatistics:
    """Counters of one connection; bytes are counted on the wire (frame headers included)."""

    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    recv_calls: int
    sendmsg_calls: int
    pings_sent: int
    buffered_in_bytes: int
    close_code: int | None


class WsConnection:
    """An open WebSocket connection (server side, binary messages only)."""

    __slots__ = (
        "_closed",
        "_closed_event",
        "_decoder",
        "_engine",
        "_fd",
        "_greedy_reads",
        "_last_rx",
        "_mixed",
        "_ping_sent_at",
        "_protocol_error",
        "_reading",
        "_ready",
        "_rx_mark",
        "_sent_close",
        "_sock",
        "_stats",
        "_tail",
        "_write_waiters",
        "_writing",
        "peer",
        "request",
        "write_pending",
    )

    def __init__(
        self,
        sock: stdlib_socket.socket,
        engine: WsEngine,
        request: HandshakeRequest,
        *,
        leftover: bytes = b"",
        peer: object = None,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._engine = engine
        self.request = request
        self.peer = peer
        self._decoder = FrameDecoder(
            max_message_bytes=engine.settings.max_message_bytes, unmask=engine.unmask
        )
        self._writing = False
        self._write_waiters = trio.lowlevel.ParkingLot()
        self._ready: list[WsEvent] = []
        self._mixed = False  # `_ready` may hold events other than binary messages
        self._protocol_error: DecodeError | None = None  # found by the decoder, acted on by the reader
        self._closed: ConnectionClosed | None = None
        self._closed_event: trio.Event | None = None  # made only when `aclose` must wait for it
        self._sent_close = False
        self._reading = False
        self._greedy_reads = 0
        self._tail: list[bytes | memoryview] = []  # the unsent rest of frames already begun
        # True while part of a frame is written and its rest waits for the next `send_batch`
        # (`_tail` is not empty); an attribute rather than a property: read after every inline write.
        self.write_pending = False
        self._last_rx = trio.current_time()  # when the keepalive sweep last saw bytes arrive
        self._rx_mark = 0  # bytes_in at that sweep
        self._ping_sent_at = -1.0
        engine.connections.add(self)
        # messages_in, bytes_in, messages_out, bytes_out, recv_calls, sendmsg_calls, pings_sent
        self._stats = [0, 0, 0, 0, 0, 0, 0]
        if leftover:  # frames the client sent right behind its upgrade request
            self._decode(leftover)

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection closed, or None while it is open."""
        return self._closed

    # -- reading ---------------------------------------------------------------------------

    async def receive_batch(self) -> list[bytes]:
        """Wait for and return all complete messages that have arrived (at least one).

        Raises:
            ConnectionClosed: the peer closed, the stream broke, a protocol error (the matching
                close code was sent), or the keepalive timed out.
        """
        if self._reading:
            raise trio.BusyResourceError("another task is already reading this connection")
        self._reading = True
        try:
            while True:
                if self._closed is not None:
                    raise self._closed
                if self._ready or self._protocol_error is not None:
                    await trio.lowlevel.checkpoint_if_cancelled()
                elif 0 < self._greedy_reads < _MAX_GREEDY_READS and self._recv_nowait():
                    # After a read that filled the buffer more is likely waiting: read again
                    # without waiting for the socket, but let the other ready tasks run first, so
                    # a flooding sender costs a fast pair at most one read's worth of frames.
                    await trio.lowlevel.checkpoint()
                else:
                    self._greedy_reads = 0
                    try:
                        await trio.lowlevel.wait_readable(self._fd)
                    except trio.ClosedResourceError:
                        self._lost("socket closed locally")
                        continue
                    self._recv_nowait()
                ready = self._ready
                if ready and not self._mixed:  # only binary messages: the batch as it is
                    self._ready = []
                    self._stats[0] += len(ready)
                    return ready  # type: ignore[return-value]  # not _mixed: every item is bytes
                if self._protocol_error is not None and not ready:
                    error = self._protocol_error
                    await self._fail(error.hint or CLOSE_POLICY_VIOLATION, str(error))
                    continue
                messages = await self._take_ready()
                if messages:
                    return messages
        finally:
            self._reading = False

    def _recv_nowait(self) -> bool:
        """Read once into the shared buffer and decode it into `_ready`; False if nothing came."""
        buf = self._engine.receive_buffer
        try:
            n = self._sock.recv_into(buf)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._lost(f"receive failed: {exc.strerror or exc}")
            return True
        stats = self._stats
        stats[4] += 1
        if n == 0:
            self._lost("connection lost without a close frame")
            return True
        stats[1] += n
        self._greedy_reads = self._greedy_reads + 1 if n == len(buf) else 0
        self._decode(self._engine.receive_view[:n])
        return True

    def _decode(self, data: bytes | memoryview) -> None:
        """Decode received bytes into `_ready` (or remember the protocol error for the reader)."""
        decoder = self._decoder
        try:
            events = decoder.feed(data)
        except DecodeError as exc:
            self._protocol_error = exc
            return
        if self._ready:
            self._ready += events
        else:
            self._ready = events
        if not decoder.all_binary:
            self._mixed = True

    async def _wait_readable(self) -> None:
        try:
            await trio.lowlevel.wait_readable(self._fd)
        except trio.ClosedResourceError:
            self._lost("socket closed locally")

    def check_keepalive(self, now: float) -> None:
        """Send a ping after `ping_interval_s` of silence; close with 1011 when it goes unanswered."""
        if self._closed is not None:
            return
        received = self._stats[1]
        if received != self._rx_mark:  # bytes arrived since the last sweep: a sign of life now
            self._rx_mark = received
            self._last_rx = now
        settings = self._engine.settings
        if self._ping_sent_at > self._last_rx:
            if now - self._ping_sent_at >= settings.pong_timeout_s:
                self.close_nowait(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
        elif now - self._last_rx >= settings.ping_interval_s and not self._writing and not self._tail:
            self._ping_sent_at = now
            self._stats[6] += 1
            ping = encode_control_frame(OP_PING)
            try:
                sent = self._sock.send(ping)
            except OSError:
                sent = 0  # a full send buffer: the write deadline deals with stuck consumers
            if 0 < sent < len(ping):  # cannot finish the frame later without blocking: give up
                self._lost("send buffer full while pinging")

    async def _take_ready(self) -> list[bytes]:
        """Move binary messages out of `_ready`; act on control frames in order."""
        ready = self._ready
        self._ready = []
        self._mixed = False
        messages: list[bytes] = []
        for i, event in enumerate(ready):
            if type(event) is bytes:
                messages.append(event)
            elif isinstance(event, Ping):
                await self._write_frames([encode_control_frame(OP_PONG, event.payload)])
            elif isinstance(event, Close):
                self._ready = ready[i + 1 :]
                self._mixed = True
                await self._on_close_event(event, have_messages=bool(messages))
                break
            elif isinstance(event, str):
                await self._fail(CLOSE_UNSUPPORTED_DATA, "text messages are not accepted")
                break
        self._stats[0] += len(messages)
        return messages

    async def _on_close_event(self, event: Close, *, have_messages: bool) -> None:
        if have_messages:  # deliver what came before the close first
            self._ready.insert(0, event)
            self._mixed = True
            return
        reply = CLOSE_NORMAL if event.code == CLOSE_NO_STATUS else event.code
        await self._send_close_quietly(reply, "")
        self._finish(ConnectionClosed(event.code, event.reason, local=False))

    # -- writing ---------------------------------------------------------------------------

    async def send_batch(self, messages: Sequence[bytes]) -> None:
        """Send binary messages, normally with one `sendmsg`; waits only if the socket is full.

        Does not yield when the kernel takes everything at once (the common case), so a router
        can call it inline. Raises `ConnectionClosed` when closed or when a write stays blocked
        past `write_timeout_s` (the connection is then aborted).
        """
        if self._closed is not None or self._sent_close:
            raise self._closed or ConnectionClosed(CLOSE_NORMAL, "closing", local=True)
        iov: list[bytes | memoryview] = []
        size = 0
        for message in messages:
            header = encode_binary_header(len(message))
            iov.append(header)
            iov.append(message)
            size += len(header) + len(message)
        self._stats[2] += len(messages)
        self._stats[3] += size
        await self._write_frames(iov, size)

    def send_batch_nowait(self, messages: Sequence[bytes]) -> bool:
        """Write `messages` now without waiting, if no other write is in progress.

        Returns False, having written nothing, while another task writes or an earlier write's
        rest is pending. Otherwise the messages belong to the connection (True): the kernel took
        them, or took part and the rest waits in `write_pending` for the next `send_batch` (an
        empty one will do). Raises `ConnectionClosed` when closed.
        """
        if self._closed is not None or self._sent_close:
            raise self._closed or ConnectionClosed(CLOSE_NORMAL, "closing", local=True)
        count = len(messages)
        if self._writing or self._tail or count * 2 > IOV_MAX:
            return False
        iov: list[bytes | memoryview] = []
        size = 0
        for message in messages:
            n = len(message)
            header = _SMALL_HEADERS[n] if n < 126 else encode_binary_header(n)
            iov += (header, message)
            size += len(header) + n
        try:
            sent = self._sock.sendmsg(iov)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(f"send failed: {exc.strerror or exc}")
            raise self._closed or ConnectionClosed(CLOSE_ABNORMAL, "", local=True) from None
        stats = self._stats
        stats[2] += count
        stats[3] += size
        stats[5] += 1
        if sent < size:
            self._tail = _advance(iov, sent)
            self.write_pending = True
        return True

    async def _write_frames(self, iov: list[bytes | memoryview], size: int = -1) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._writing:  # one writer at a time; frames of two batches never interleave
            await self._write_waiters.park()
        self._writing = True
        try:
            await self._write_locked(iov, size)
        finally:
            self._writing = False
            if self._write_waiters:  # unpark() costs a few µs even with nobody waiting
                self._write_waiters.unpark()

    async def _write_locked(self, iov: list[bytes | memoryview], size: int) -> None:
        if self._closed is not None:
            raise self._closed
        if self._tail:  # the rest of frames already begun goes first
            iov, size, self._tail = self._tail + iov, -1, []
            self.write_pending = False
        while iov:
            chunk = iov if len(iov) <= IOV_MAX else iov[:IOV_MAX]
            try:
                sent = self._sock.sendmsg(chunk)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._lost(f"send failed: {exc.strerror or exc}")
                raise self._closed or ConnectionClosed(CLOSE_ABNORMAL, "", local=True) from None
            self._stats[5] += 1
            if sent == size:
                return
            size = -1  # unknown after a partial write; _advance finds the rest
            rest = _advance(iov, sent)
            if rest and (chunk is iov or sent < sum(map(len, chunk))):
                try:
                    await self._wait_writable()  # the kernel took less than offered: buffer full
                except BaseException:
                    self._tail = rest  # cancelled half way: finish this frame before any other
                    self.write_pending = True
                    raise
            iov = rest

    async def _wait_writable(self) -> None:
        with trio.move_on_after(self._engine.settings.write_timeout_s) as scope:
            try:
                await trio.lowlevel.wait_writable(self._sock)
            except trio.ClosedResourceError:
                self._lost("socket closed locally")
        if scope.cancelled_caught:
            self._finish(ConnectionClosed(CLOSE_POLICY_VIOLATION, "write timed out", local=True))
        if self._closed is not None:
            raise self._closed

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Run the closing handshake (RFC 6455 §7.1.2) within `close_timeout_s`, then close TCP."""
        if self._closed is not None:
            return
        with trio.move_on_after(self._engine.settings.close_timeout_s) as scope:
            scope.shield = True
            await self._send_close_quietly(code, reason)
            if self._reading:  # the reader will see the peer's close frame and finish
                self._closed_event = self._closed_event or trio.Event()
                await self._closed_event.wait()
            else:
                await self._drain_until_close()
        self._finish(ConnectionClosed(code, reason, local=True))

    async def _drain_until_close(self) -> None:
        while self._closed is None and self._protocol_error is None:
            if not self._ready:
                await self._wait_readable()
                self._recv_nowait()
            ready, self._ready = self._ready, []
            for event in ready:
                if isinstance(event, Close):
                    self._finish(ConnectionClosed(event.code, event.reason, local=False))
                    return

    def close_nowait(self, code: int = CLOSE_GOING_AWAY, reason: str = "") -> None:
        """Send a close frame if the socket takes it at once, then close TCP (for cancellation)."""
        if self._closed is not None:
            return
        if not self._sent_close and not self._writing and not self._tail:
            self._sent_close = True
            with contextlib.suppress(OSError):
                self._sock.send(encode_close(code, reason))
        self._finish(ConnectionClosed(code, reason, local=True))

    async def _fail(self, code: int, reason: str) -> None:
        """Close because of a local decision or a protocol error, with a close frame if possible."""
        with trio.move_on_after(self._engine.settings.close_timeout_s) as scope:
            scope.shield = True
            await self._send_close_quietly(code, reason)
        self._finish(ConnectionClosed(code, reason, local=True))

    async def _send_close_quietly(self, code: int, reason: str) -> None:
        if self._sent_close or self._closed is not None:
            return
        self._sent_close = True
        with contextlib.suppress(ConnectionClosed):
            await self._write_frames([encode_close(code, reason)])

    def _lost(self, reason: str) -> None:
        self._finish(ConnectionClosed(CLOSE_ABNORMAL, reason, local=False))

    def _finish(self, exc: ConnectionClosed) -> None:
        if self._closed is not None:
            return
        self._closed = exc
        self._ready = []
        self._engine.connections.discard(self)
        if self._closed_event is not None:
            self._closed_event.set()
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()

    def statistics(self) -> WsConnectionStatistics:
        """Return this connection's counters."""
        s = self._stats
        return WsConnectionStatistics(
            messages_in=s[0],
            bytes_in=s[1],
            messages_out=s[2],
            bytes_out=s[3],
            recv_calls=s[4],
            sendmsg_calls=s[5],
            pings_sent=s[6],
            buffered_in_bytes=self._decoder.buffered_bytes,
            close_code=self._closed.code if self._closed is not None else None,
        )


def _advance(iov: list[bytes | memoryview], sent: int) -> list[bytes | memoryview]:
    """Drop the first `sent` bytes from an iovec list (partial `sendmsg`)."""
    for i, piece in enumerate(iov):
        size = len(piece)
        if sent < size:
            rest = iov[i:]
            if sent:
                rest[0] = memoryview(piece)[sent:]
            return rest
        sent -= size
    return []
