"""One peer link's HTTP/2 connection on the Trio thread: `asgard.v1.Mesh/Link` with h2 as the
sans-IO protocol engine on a non-blocking socket (`_wire`), shared by both ends (`_dial` dials,
`_accept` accepts), so no link message ever crosses to another thread.

Theory of operation
-------------------
* One connection, one stream: HEADERS `POST /asgard.v1.Mesh/Link` (`te: trailers`,
  `content-type: application/grpc`), then length-prefixed messages (1 flag byte, 4 length bytes:
  gRPC over HTTP/2) in DATA frames both ways; the server ends with trailers holding `grpc-status`.
* `H2End` is the `FarEnd` of the link's `PeerStream` (`node.mesh._peer`); subclasses say how the
  stream starts and ends (client: request headers, END_STREAM on its DATA; server: response
  headers, trailers).
* Sending costs no task switch: `push` queues the message, and at the end of the current pass
  of Trio's scheduler (a Trio instrument's `before_io_wait`) every queued message is encoded into
  one DATA write and written to the socket without waiting (messages queued together go out
  together; a lone one is never held back). The DATA frames of the link's stream are framed here
  (`_h2frames`), not by h2, which would cost as much CPU per small frame as the rest of the hop;
  the flow-control windows stay h2's (decremented here as h2's `send_data` does). Only when the
  kernel does not take it all does a task wait for the socket to drain, and nothing more is
  encoded meanwhile. HTTP/2 flow control (RFC 9113 §5.2) holds messages back while the peer's
  window is used up; a WINDOW_UPDATE resumes them.
* Receiving: one task waits for the socket and cuts the bytes into HTTP/2 frames; plain DATA
  frames of the link's open stream (no END_STREAM, not inside a header block)
  are taken here, every other frame (and anything malformed or too long) goes to h2 in order.
  Both acknowledge the bytes at once (here: a WINDOW_UPDATE once half the window is used, as
  h2's own rule, so the window left never drops below half of it). It cuts the
  messages out of the DATA (each at most `max_message_bytes`; at most `PRE_AUTH_MESSAGE_BYTES`
  until the link's challenge-response has passed, so an unauthenticated peer cannot make a
  connection hold more) and hands them to `PeerStream`
  inline. While `window` messages are with the node and not consumed it stops reading, so TCP
  and HTTP/2 push back on the peer and every buffer stays bounded: the partial message (at most
  `max_message_bytes`), the partial frame (at most one frame of the size we accept: a frame
  header announcing a longer one ends the connection with FRAME_SIZE_ERROR at once, RFC 9113
  §4.2), h2's frame buffer (a header block of at most 64
  CONTINUATIONs, decoded to at most `MAX_HEADER_LIST_BYTES`), and the bytes waiting for the
  kernel (past `MAX_UNSENT_BYTES`, e.g. acks of a PING flood to a peer that does not read, the
  link is dropped). What h2 answers by itself (SETTINGS and PING acks, WINDOW_UPDATE) is written
  right after.
* Ends: `close()` sends what is queued, then ends the stream; the connection closes once both
  sides have ended it, or `END_WAIT_S` after ours. A non-OK `grpc-status`, a reset, a GOAWAY, a
  protocol error or a lost connection end the link with `Unavailable`.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from node.errors import Unavailable
from node.mesh._h2frames import (
    DATA,
    END_STREAM,
    HEAD_BYTES,
    PADDED,
    data_head,
    opens_block,
    parse_head,
    window_update,
)
from node.mesh._peer import PeerStream
from node.mesh._peer_codec import PeerDecodeError, decode, decode_at, encode_batch
from node.mesh._peer_model import PeerMessage
from node.mesh._wire import PlainWire, Wire

_PREFIX = struct.Struct(">BI")
WINDOW_BYTES = 4 << 20  # as grpclib's defaults: WINDOW_UPDATE frames stay rare
MAX_HEADER_LIST_BYTES = 8 << 10
"""Largest decoded header list accepted (RFC 9113 §6.5.2 SETTINGS_MAX_HEADER_LIST_SIZE)."""
PRE_AUTH_MESSAGE_BYTES = 64 << 10
"""Largest message before the peer has authenticated (HELLO, CHALLENGE, PROOF are far smaller)."""
_PREFACE_BYTES = 24  # the client's connection preface (RFC 9113 §3.4)
MAX_UNSENT_BYTES = 2 * WINDOW_BYTES + (1 << 20)
"""Bytes waiting for the kernel beyond which the peer is taken to not read (the pump stops
encoding while anything waits, so only one window's DATA plus control frames can pile up)."""
_MAX_WRITE_BATCH = 128
END_WAIT_S = 2.0
MAX_MESSAGE_BYTES = 4 << 20
"""Default largest message accepted from the peer."""

LINK_ERRORS = (Unavailable, OSError, trio.TooSlowError, h2.exceptions.H2Error, ssl.SSLError)


def unavailable(error: BaseException) -> Unavailable:
    """`error` as the `Unavailable` a broken link reports."""
    if isinstance(error, Unavailable):
        return error
    if isinstance(error, trio.TooSlowError):
        return Unavailable("connecting to the peer timed out")
    return Unavailable(f"peer link broke: {type(error).__name__}: {error}")


def _nothing() -> None:
    """Run on Trio's thread only to end its I/O wait (`H2End.before_io_wait`)."""


class Oversized(Unavailable):
    """The peer sent a message beyond the limit."""


class H2End(trio.abc.Instrument):
    """The connection end of a `PeerStream` (see the module docstring); one per connection."""

    client_side = True
    linger = False
    """Whether the connection half-closes and reads to the peer's end before closing, so that our
    last frames (a refusal, trailers) reach a peer still sending instead of being lost to a TCP
    reset (the server: its peer closes once it has the trailers)."""

    def __init__(
        self, peer: PeerStream, window: int, max_message_bytes: int, pre_auth_message_bytes: int
    ) -> None:
        self._peer = peer
        self._outbox: deque[PeerMessage] = deque()
        self._held = b""  # encoded, waiting for the peer's flow-control window
        self._held_pos = 0  # how much of `_held` is framed already
        self._out: list[bytes] = []  # frames written around h2, after h2's earlier output
        self._h2_dirty = True  # h2 was called since its output was last taken (see `_h2_data`)
        self._rx = b""  # the start of a frame not yet complete
        self._rx_open = False  # the peer may send DATA on the link's stream (taken here)
        self._rx_unacked = 0  # DATA bytes taken here and not yet given back in a WINDOW_UPDATE
        self._in_block = False  # a header block goes on (only CONTINUATION may follow)
        self._preface = 0 if self.client_side else _PREFACE_BYTES  # preface bytes still due
        self._inbound = bytearray()  # the start of a message not yet complete
        self._stalled = False  # `_cut` stopped for want of credits
        self._due = False
        self._woke = False  # the pump woke a Trio task (see before_io_wait)
        self._credits = window  # messages the node may hold unconsumed
        self._max_message = min(max_message_bytes, pre_auth_message_bytes)
        self._max_message_authenticated = max_message_bytes
        self._wire: Wire = PlainWire(None)
        self._drain_wake = trio.Event()
        self._reader_wake: trio.Event | None = None
        self._closing = False
        self._ended = False
        self._stream_ended = trio.Event()  # our side of the stream is over (or the link broke)
        self._read_done = trio.Event()  # the peer is done too
        self._error: Unavailable | None = None
        self._scope: trio.CancelScope | None = None
        self._stream_id: int | None = None
        self._nursery: trio.Nursery | None = None
        self._owner_done: trio.Event | None = None  # the task that owns the link (acceptor) ended
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=self.client_side, header_encoding="utf-8")
        )
        self._h2.decoder.max_header_list_size = MAX_HEADER_LIST_BYTES  # also before our SETTINGS' ack
        self.finished = trio.Event()
        peer.attach(self)

    @property
    def linked(self) -> bool:
        """True once the link's stream is open."""
        return self._stream_id is not None

    # Called by PeerStream ----------------------------------------------------------------------
    def push(self, message: PeerMessage) -> None:
        self._outbox.append(message)
        self._due = True

    def credit(self, count: int) -> None:
        self._credits += count
        if self._reader_wake is not None:
            self._reader_wake.set()

    def close(self) -> None:
        self._closing = True
        self._due = True

    def authenticated(self) -> None:
        """The peer proved itself: messages up to `max_message_bytes` from now on."""
        self._max_message = self._max_message_authenticated

    def end(self, error: BaseException | None) -> None:
        """Tell `PeerStream` the link is over (once)."""
        if not self._ended:
            self._ended = True
            self._woke = True
            self._peer.far_end(error)

    # Subclasses -------------------------------------------------------------------------------
    def _start(self) -> None:
        """Queue the connection's first frames (preface, SETTINGS, request headers)."""
        raise NotImplementedError

    def _end_stream(self) -> None:
        """Everything queued is encoded and Trio closed the link: end our side of the stream."""
        raise NotImplementedError

    def _abort_stream(self, error: Unavailable) -> None:
        """Tell the peer why the link is dropped (before the connection closes)."""

    def _event(self, event: h2.events.Event) -> bool:
        """React to a non-DATA event; True once the peer is done with the connection."""
        raise NotImplementedError

    def _eof(self) -> None:
        """The peer closed the connection (raise when that is an error)."""
        raise Unavailable("the peer closed the connection")

    # The connection ------------------------------------------------------------------------------
    async def run(self, wire: Wire, *, deadline: float = float("inf")) -> None:
        """Speak the link on `wire` until it ends (or `deadline`); raises only Cancelled."""
        self._wire = wire
        try:
            with trio.CancelScope(deadline=deadline) as self._scope:
                self._settings()
                self._start()
                trio.lowlevel.add_instrument(self)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._reader_main)
                    nursery.start_soon(self._drain_main)
                    self._pump()
                    await self._stream_ended.wait()
                    with trio.move_on_after(END_WAIT_S):
                        await self._read_done.wait()
                        if self._owner_done is not None:
                            await self._owner_done.wait()
                    nursery.cancel_scope.cancel()
                with trio.move_on_after(END_WAIT_S):
                    await wire.drain()  # e.g. our trailers, when the kernel did not take them at once
                    if self.linger:
                        await wire.linger()
        except trio.Cancelled:
            self.end(Unavailable("the link was closed"))
            raise
        finally:
            self.end(self._error if self._error is not None else self._timed_out())
            with contextlib.suppress(KeyError):  # (not added when opening failed)
                trio.lowlevel.remove_instrument(self)
            wire.close()
            self.finished.set()

    def _timed_out(self) -> Unavailable | None:
        scope = self._scope
        return Unavailable("the link timed out") if scope is not None and scope.cancelled_caught else None

    def _settings(self) -> None:
        conn = self._h2
        conn.initiate_connection()
        conn.increment_flow_control_window(WINDOW_BYTES - conn.local_settings.initial_window_size)
        conn.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW_BYTES,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1,
            }
        )

    def _fail(self, error: BaseException) -> None:
        """The link broke: end it with `error`, tell the peer when that helps, stop the tasks."""
        if self._error is None:
            self._error = unavailable(error)
            self._h2_dirty = True
            with contextlib.suppress(*LINK_ERRORS):
                self._abort_stream(self._error)  # (refused by h2 once it closed the connection)
            with contextlib.suppress(*LINK_ERRORS):
                self._write_output()  # e.g. h2's GOAWAY after a protocol error
        self.end(self._error)
        self._stream_ended.set()
        self._woke = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # then `run` writes the rest and closes
        elif self._scope is not None:
            self._scope.cancel()

    # Writing ----------------------------------------------------------------------------------
    def before_io_wait(self, timeout: float) -> None:
        """End of a pass of Trio's scheduler: write what was queued during it."""
        if self._due:
            self._woke = False
            self._pump()
            if self._woke and timeout > 0:
                # Trio chose `timeout` before this hook ran: a task the pump woke (the drain task,
                # a sender waiting for room, the link's end) must not wait for the next I/O event.
                trio.lowlevel.current_trio_token().run_sync_soon(_nothing)

    def _pump(self) -> None:
        """Encode queued messages within the peer's window and write them without waiting."""
        self._due = False
        if self._wire.pending or self._stream_ended.is_set() or self._stream_id is None:
            return  # the drain task resumes once the socket has taken the rest
        try:
            sent = self._encode_queued()
            if not self._outbox and not self._held and self._closing:
                self.end(None)  # Trio closed the link and everything queued is on its way
                self._h2_dirty = True
                self._end_stream()
                self._stream_ended.set()
                self._woke = True
            self._write_output()
        except LINK_ERRORS as exc:
            self._fail(exc)
            return
        if sent:
            self._woke |= self._peer.sender_waiting
            self._peer.far_credit(sent)

    def _encode_queued(self) -> int:
        """Encode queued messages into DATA within the peer's window; returns how many were taken."""
        conn, outbox, taken, sid = self._h2, self._outbox, 0, self._stream_id
        assert sid is not None
        stream = conn.streams.get(sid)
        if stream is None:
            raise Unavailable("the link's stream is closed")
        out = self._out
        earlier = self._h2_data()
        if earlier:
            out.append(earlier)  # h2's frames queued before these go first
        while self._held or outbox:
            if not self._held:
                batch = [outbox.popleft() for _ in range(min(len(outbox), _MAX_WRITE_BATCH))]
                self._held, self._held_pos = encode_batch(batch), 0
                taken += len(batch)
            window = min(conn.outbound_flow_control_window, stream.outbound_flow_control_window)
            if window <= 0:
                break  # the rest waits for a WINDOW_UPDATE (RFC 9113 §6.9)
            held, pos = self._held, self._held_pos
            size = min(window, conn.max_outbound_frame_size, len(held) - pos)
            out.append(data_head(size, sid))
            out.append(held if size == len(held) else held[pos : pos + size])
            # What h2's send_data does besides building frame objects: the windows shrink.
            conn.outbound_flow_control_window -= size
            stream.outbound_flow_control_window -= size
            if pos + size == len(held):
                self._held, self._held_pos = b"", 0
            else:
                self._held_pos = pos + size
        return taken

    def _h2_data(self) -> bytes:
        """What h2 has queued to send. Asked only after a call into h2 (each sets `_h2_dirty`):
        the link's own DATA both ways does not call h2, and asking costs ~1.5 µs a time."""
        if not self._h2_dirty:
            return b""
        self._h2_dirty = False
        return self._h2.data_to_send()

    def _write_output(self) -> None:
        data = self._h2_data()
        out = self._out
        if out:
            if data:
                out.append(data)
            data = b"".join(out)
            out.clear()
        if data and self._wire.write_nowait(data):
            if self._wire.pending_bytes > MAX_UNSENT_BYTES:
                raise Unavailable("the peer does not read what this node sends")
            self._drain_wake.set()
            self._woke = True

    async def _drain_main(self) -> None:
        """Write what the kernel did not take at once, then resume encoding."""
        try:
            while True:
                await self._drain_wake.wait()
                self._drain_wake = trio.Event()
                await self._wire.drain()
                self._pump()
        except LINK_ERRORS as exc:
            self._fail(exc)

    # Reading ----------------------------------------------------------------------------------
    async def _reader_main(self) -> None:
        try:
            await self._read()
        except LINK_ERRORS as exc:
            self._fail(exc)
        except PeerDecodeError as exc:
            self._fail(Unavailable(f"the peer sent a malformed message: {exc}"))
        self.end(self._error)
        self._stream_ended.set()
        self._read_done.set()

    async def _read(self) -> None:
        """Read until the peer is done with the connection."""
        while True:
            data = await self._wire.receive()
            if not data:
                self._eof()
                return
            if self._preface:  # (server) h2 checks the preface itself
                head, data = data[: self._preface], data[self._preface :]
                self._preface -= len(head)
                if await self._to_h2(head):
                    return
            if self._rx:
                data = self._rx + data
            if await self._frames(data):
                return
            self._write_output()

    async def _frames(self, data: bytes) -> bool:
        """Take the link's plain DATA frames here, hand the other frames to h2 in order; keep an
        incomplete frame for the next read. True once the peer is done with the connection."""
        pos, size, slow = 0, len(data), -1  # slow: where the frames for h2 start (-1: none)
        max_frame = self._h2.max_inbound_frame_size
        while size - pos >= HEAD_BYTES:
            length, kind, flags, stream = parse_head(data, pos)
            end = pos + HEAD_BYTES + length
            if length > max_frame:  # refused before it is buffered (h2 would wait for all of it)
                self._h2_dirty = True
                self._h2.close_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
                raise h2.exceptions.FrameTooLargeError(f"the peer sent a frame of {length} bytes")
            if end > size:
                break
            if kind == DATA and not flags & END_STREAM and not self._in_block:
                if slow >= 0:  # h2 first: the frames before may open the stream
                    if await self._to_h2(data[slow:pos]):
                        return True
                    slow = -1
                if stream == self._stream_id and self._rx_open:
                    await self._payload(data, *self._data(data, pos + HEAD_BYTES, end, flags))
                    pos = end
                    continue
            block = opens_block(kind, flags)
            if block is not None:
                self._in_block = block
            if slow < 0:
                slow = pos
            pos = end
        self._rx = data[pos:]
        return slow >= 0 and await self._to_h2(data[slow:pos])

    def _data(self, data: bytes, start: int, end: int, flags: int) -> tuple[int, int]:
        """A DATA frame of the link's stream: flow control; returns where its data is."""
        length = end - start
        # Acknowledged at once, told once half the window is used (h2's rule): the window left
        # is never below half of it, far more than a frame, so a peer cannot overrun it (what it
        # sends waits in the kernel once the node stops reading for want of credits).
        self._rx_unacked += length
        if self._rx_unacked >= WINDOW_BYTES // 2:
            assert self._stream_id is not None
            self._emit(window_update(0, self._rx_unacked) + window_update(self._stream_id, self._rx_unacked))
            self._rx_unacked = 0
        if flags & PADDED:  # RFC 9113 §6.1
            if not length or data[start] >= length:
                raise h2.exceptions.ProtocolError("DATA padding exceeds the frame")
            end -= data[start]
            start += 1
        return start, end

    def _emit(self, frames: bytes) -> None:
        """Queue frames made here behind what h2 has queued."""
        earlier = self._h2_data()
        if earlier:
            self._out.append(earlier)
        self._out.append(frames)

    async def _to_h2(self, data: bytes) -> bool:
        """Frames for h2; True once the peer is done with the connection."""
        try:
            for event in self._h2.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if event.stream_id == self._stream_id and event.data:
                        await self._payload(event.data, 0, len(event.data))
                    continue
                ends = isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset))
                if ends and getattr(event, "stream_id", None) == self._stream_id:
                    self._rx_open = False  # more DATA on it is h2's to refuse
                if self._event(event):
                    return True
            return False
        finally:
            self._h2_dirty = True  # (also after a wait for credits, during which the pump ran)

    async def _payload(self, data: bytes, start: int, end: int) -> None:
        """Hand every complete message to the node; keep the start of an incomplete one."""
        inbound = self._inbound
        if inbound:
            inbound += data[start:end]
            pos = self._cut(inbound, 0, len(inbound))
            while self._stalled:
                await self._wait_credit()
                pos = self._cut(inbound, pos, len(inbound))
            del inbound[:pos]
            return
        pos = self._cut(data, start, end)  # straight out of the received bytes: no copy
        while self._stalled:
            await self._wait_credit()
            pos = self._cut(data, pos, end)
        if pos < end:
            inbound += data[pos:end]

    async def _wait_credit(self) -> None:
        while not self._credits:
            self._reader_wake = trio.Event()
            await self._reader_wake.wait()
        self._reader_wake = None

    def _cut(self, buf: bytes | bytearray, pos: int, end: int) -> int:
        """Deliver the complete messages in `buf[pos:end]` while credits last; returns where the
        rest starts (`_stalled` when it stopped for want of credits)."""
        self._stalled = False
        while end - pos >= _PREFIX.size:
            compressed, size = _PREFIX.unpack_from(buf, pos)
            if compressed:
                raise Unavailable("the peer sent a compressed message (not supported)")
            if size > self._max_message:
                raise Oversized(f"the peer sent a message of {size} bytes (limit {self._max_message})")
            stop = pos + _PREFIX.size + size
            if stop > end:
                break
            if not self._credits:
                self._stalled = True
                break
            if type(buf) is bytes:
                message = decode_at(buf, pos + _PREFIX.size, stop)
            else:
                message = decode(bytes(buf[pos + _PREFIX.size : stop]))
            pos = stop
            if not self._ended:
                self._credits -= 1
                self._peer.far_deliver(message)
        return pos

    def _connection_event(self, event: h2.events.Event) -> None:
        """Events of the whole connection, the same for both ends."""
        if isinstance(event, h2.events.ConnectionTerminated):
            raise Unavailable(f"the peer closed the connection (GOAWAY, error {event.error_code})")
        if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._due = True  # the window may have opened for messages held back
        elif isinstance(event, h2.events.StreamReset) and event.stream_id == self._stream_id:
            raise Unavailable(f"the peer reset the link (HTTP/2 error {event.error_code})")
