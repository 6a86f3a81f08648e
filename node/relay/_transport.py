"""What a device session needs from its connection, and the connection of a gRPC Connect stream.

`DeviceLink` (one device session: registration, routing, replies, lock frames) runs over any
`FrameTransport`: the WebSocket connection (`_wsconn.WsConnection`) or a `ChannelTransport`, a pair
of Trio channels that the gRPC bridge feeds with the frames of one `Routing.Connect` stream. So a
device behaves the same on both surfaces and the session logic exists once.

ChannelTransport mirrors the WebSocket connection's contract:

* `receive_batch()` waits for one frame and takes whatever else has already arrived (up to
  `MAX_BATCH`), so the reader handles a burst as one batch (one rate check, one flush);
* `send_batch_nowait()` hands frames over without waiting while the channel has credit (the
  router's inline flush); frames that find no credit are kept in order (`write_pending`) and the
  next `send_batch` (the writer task) sends them first;
* `send_batch()` waits for credit, at most `write_timeout_s` per frame: a client that stops reading
  is closed with 1008 like a stuck WebSocket consumer;
* `aclose(code, reason)` ends the outgoing stream; the close code is kept for the caller, which
  maps it to the gRPC status the client gets (docs/protocol.md §1);
* the client's half-close ends only the input (the session closes with 1000): frames the node
  has already queued for the device are still written before the call ends, as gRPC clients
  expect after closing their side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from node.relay._wsconn import CLOSE_ABNORMAL, ConnectionClosed
from wire.ws import CLOSE_NORMAL, CLOSE_POLICY_VIOLATION

MAX_BATCH = 256


class TransportStatistics(Protocol):
    """The counters the relay reads from every connection."""

    @property
    def bytes_in(self) -> int: ...

    @property
    def bytes_out(self) -> int: ...


class FrameTransport(Protocol):
    """One device connection carrying whole device frames (see the module docstring)."""

    async def receive_batch(self) -> list[bytes]:
        """Frames that have arrived (at least one); ConnectionClosed when the connection ends."""
        ...

    async def send_batch(self, messages: Sequence[bytes]) -> None:
        """Send frames in order, waiting if the peer is slow; ConnectionClosed when closed."""
        ...

    def send_batch_nowait(self, messages: Sequence[bytes]) -> bool:
        """Take frames without waiting, or return False (having taken none)."""
        ...

    @property
    def write_pending(self) -> bool:
        """True while frames taken by `send_batch_nowait` wait for the next `send_batch`."""
        ...

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close with `code` (idempotent)."""
        ...

    def statistics(self) -> TransportStatistics:
        """Byte counters."""
        ...


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """Counters of a ChannelTransport (bytes are frame bytes: no transport framing)."""

    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    close_code: int | None


class ChannelTransport:
    """A device connection over two Trio channels (a gRPC Connect stream through the bridge)."""

    def __init__(
        self,
        receive: trio.abc.ReceiveChannel[bytes],
        send: trio.abc.SendChannel[bytes],
        *,
        write_timeout_s: float,
    ) -> None:
        self._receive = receive
        self._send = send
        # Non-blocking ends when the channels have them (Trio's memory channels, the bridge pipes).
        self._receive_nowait: Callable[[], bytes] | None = getattr(receive, "receive_nowait", None)
        self._send_nowait: Callable[[bytes], None] | None = getattr(send, "send_nowait", None)
        self.write_timeout_s = write_timeout_s
        self._closed: ConnectionClosed | None = None
        # The client's half-close ends the input only: what the node has queued still goes out.
        self._input_end: ConnectionClosed | None = None
        self._tail: list[bytes] = []
        self._writing = False
        self._write_waiters = trio.lowlevel.ParkingLot()
        self._counts = [0, 0, 0, 0]  # messages in, bytes in, messages out, bytes out

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection closed, or None while it is open."""
        return self._closed

    # -- reading ---------------------------------------------------------------------------
    async def receive_batch(self) -> list[bytes]:
        """Wait for one frame, then take those already waiting behind it."""
        if self._closed is not None:
            raise self._closed
        if self._input_end is not None:
            raise self._input_end
        try:
            batch = [await self._receive.receive()]
        except trio.EndOfChannel:
            self._input_end = ConnectionClosed(CLOSE_NORMAL, "the client finished sending", local=False)
            raise self._input_end from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._finish(CLOSE_ABNORMAL, "the stream broke", local=False) from None
        receive_nowait = self._receive_nowait
        if receive_nowait is not None:
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.BrokenResourceError):
                    break  # the next receive_batch reports the end
        counts = self._counts
        counts[0] += len(batch)
        counts[1] += sum(map(len, batch))
        return batch

    # -- writing ---------------------------------------------------------------------------
    def send_batch_nowait(self, messages: Sequence[bytes]) -> bool:
        """Hand frames over while credit lasts; the rest waits, in order, for `send_batch`."""
        if self._closed is not None:
            raise self._closed
        send_nowait = self._send_nowait
        if self._writing or self._tail or send_nowait is None:
            return False
        for i, frame in enumerate(messages):
            try:
                send_nowait(frame)
            except trio.WouldBlock:
                self._tail = list(messages[i:])
                break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._finish(CLOSE_ABNORMAL, "the stream broke", local=False) from None
        self._count_out(messages)
        return True

    @property
    def write_pending(self) -> bool:
        """True while frames taken without waiting still wait for credit."""
        return bool(self._tail)

    async def send_batch(self, messages: Sequence[bytes]) -> None:
        """Send the kept frames, then `messages`; at most `write_timeout_s` per credit wait."""
        if self._closed is not None:
            raise self._closed
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._writing:  # one writer at a time: frames of two batches never interleave
            await self._write_waiters.park()
        self._writing = True
        try:
            pending, self._tail = self._tail + list(messages), []
            self._count_out(messages)
            for i, frame in enumerate(pending):
                try:
                    await self._send_one(frame)
                except BaseException:
                    self._tail = pending[i:]  # cancelled: the rest goes first next time
                    raise
        finally:
            self._writing = False
            if self._write_waiters:
                self._write_waiters.unpark()

    async def _send_one(self, frame: bytes) -> None:
        send_nowait = self._send_nowait
        try:
            if send_nowait is not None:
                try:
                    send_nowait(frame)
                    return
                except trio.WouldBlock:
                    pass
            with trio.move_on_after(self.write_timeout_s):
                await self._send.send(frame)
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._finish(CLOSE_ABNORMAL, "the stream broke", local=False) from None
        raise self._finish(CLOSE_POLICY_VIOLATION, "write timed out", local=True)

    def _count_out(self, messages: Sequence[bytes]) -> None:
        counts = self._counts
        counts[2] += len(messages)
        counts[3] += sum(map(len, messages))

    # -- closing ---------------------------------------------------------------------------
    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """End the outgoing stream; the first close (local or remote) keeps its code."""
        self._finish(code, reason, local=True)
        await self._send.aclose()

    def _finish(self, code: int, reason: str, *, local: bool) -> ConnectionClosed:
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason, local=local)
        return self._closed

    def statistics(self) -> ChannelStatistics:
        """Return this connection's counters."""
        c = self._counts
        code = self._closed.code if self._closed is not None else None
        return ChannelStatistics(c[0], c[1], c[2], c[3], code)
