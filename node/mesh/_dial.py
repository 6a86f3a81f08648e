"""A peer link dialled from Trio: `asgard.v1.Mesh/Link` over HTTP/2 on a plain socket of the Trio
thread, with h2 as the sans-IO protocol engine, so the dialling side never hands a message over
to the gRPC island thread.

Theory of operation
-------------------
Why: a link message that crosses the island costs a hand-over each way between the Trio thread
and the island thread (a wake-up of the other thread and a GIL hand-off) besides grpclib's own
work; measured per thread (`python -m bench.mesh --threads`), that was most of the CPU of a
cross-node round trip. The dialler owns its connection (one link, one connection), so it speaks
the same gRPC stream itself; the acceptor serves it with grpclib on its island as before, and the
bytes on the wire are the same.

* One connection, one stream (id 1): HEADERS `POST /asgard.v1.Mesh/Link` with `te: trailers`
  and `content-type: application/grpc`, then length-prefixed messages (1 flag byte, 4 length
  bytes: gRPC over HTTP/2) in DATA frames both ways; the server ends with trailers holding
  `grpc-status`.
* `PeerStream` is the same Trio-side handle as on the island; its far end here is `_DialledEnd`
  and a "post" is a plain call.
* Sending costs no task switch: `push` queues the message, and at the end of the current pass
  of Trio's scheduler (a Trio instrument's `before_io_wait`, as the bridge's `TrioOutbox`) every
  queued message is encoded into one DATA write and written to the socket without waiting
  (messages queued together go out together; a lone one is never held back). Only when the
  kernel does not take it all does a task wait for the socket to drain, and nothing more is
  encoded meanwhile. HTTP/2 flow control (RFC 9113 §5.2) holds messages back while the peer's
  window is used up; a WINDOW_UPDATE resumes them.
* Receiving: one task waits for the socket, feeds h2, acknowledges the bytes at once, cuts the
  messages out of the DATA (each at most `max_message_bytes`) and hands them to `PeerStream`
  inline. While `window` messages are with the node and not consumed it stops reading, so TCP
  and HTTP/2 push back on the peer and every buffer stays bounded. What h2 answers by itself
  (SETTINGS and PING acks, WINDOW_UPDATE) is written right after.
* TLS runs through `ssl.SSLObject` on memory BIOs, so the same non-blocking writes carry it.
* Ends: `close()` sends what is queued, then END_STREAM; the connection closes once the server
  has ended the stream (its trailers) or after `END_WAIT_S`. A non-OK `grpc-status`, a reset, a
  GOAWAY, a protocol error or a lost connection end the link with `Unavailable`, as the
  island's dialler does.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from node.errors import Unavailable
from node.mesh._wire import PlainWire, Wire, connect_wire
from node.rpc._peer import LINK, PeerStream
from node.rpc._peer_codec import PeerDecodeError, decode, encode_batch
from node.rpc._peer_model import PeerMessage

_PREFIX = struct.Struct(">BI")
_STREAM = 1
_WINDOW_BYTES = 4 << 20  # as grpclib's defaults: WINDOW_UPDATE frames stay rare
_MAX_WRITE_BATCH = 128
END_WAIT_S = 2.0
MAX_MESSAGE_BYTES = 4 << 20
"""Largest message accepted from the acceptor (the rpc listener's default `max_message_bytes`)."""

_LINK_ERRORS = (Unavailable, OSError, trio.TooSlowError, h2.exceptions.H2Error, ssl.SSLError)


def _unavailable(error: BaseException) -> Unavailable:
    if isinstance(error, Unavailable):
        return error
    if isinstance(error, trio.TooSlowError):
        return Unavailable("connecting to the peer timed out")
    return Unavailable(f"peer link broke: {type(error).__name__}: {error}")


def _call(fn: object, *args: object) -> None:
    """`PeerStream`'s post when its far end runs on Trio too: call it now."""
    fn(*args)  # type: ignore[operator]


class _DialledEnd(trio.abc.Instrument):
    """The far end of a dialled `PeerStream`, on the Trio thread (see the module docstring)."""

    def __init__(self, peer: PeerStream, window: int, max_message_bytes: int) -> None:
        self._peer = peer
        self._outbox: deque[PeerMessage] = deque()
        self._held = b""  # encoded, waiting for the peer's flow-control window
        self._due = False
        self._credits = window  # messages the node may hold unconsumed
        self._max_message = max_message_bytes
        self._wire: Wire = PlainWire(None)
        self._drain_wake = trio.Event()
        self._reader_wake: trio.Event | None = None
        self._closing = False
        self._ended = False
        self._stream_ended = trio.Event()  # END_STREAM sent (after close) or the link broke
        self._error: Unavailable | None = None
        self._status_error: Unavailable | None = None
        self._scope: trio.CancelScope | None = None
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.finished = trio.Event()
        peer._far = self

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

    def end(self, error: BaseException | None) -> None:
        """Tell `PeerStream` the link is over (once)."""
        if not self._ended:
            self._ended = True
            self._peer.far_end(error)

    # The connection ------------------------------------------------------------------------------
    async def run(self, wire: Wire, authority: str, scheme: str) -> None:
        """Speak the link on `wire` until it ends; raises only Cancelled."""
        self._wire = wire
        try:
            with trio.CancelScope() as self._scope:
                self._open(authority, scheme)
                trio.lowlevel.add_instrument(self)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader_main)
                    nursery.start_soon(self._drain_main)
                    self._pump()
                    await self._stream_ended.wait()
                    nursery.cancel_scope.deadline = trio.current_time() + END_WAIT_S
        except trio.Cancelled:
            self.end(Unavailable("the link was closed"))
            raise
        finally:
            self.end(self._error)
            with contextlib.suppress(KeyError):  # (not added when opening failed)
                trio.lowlevel.remove_instrument(self)
            wire.close()

    def _fail(self, error: BaseException) -> None:
        """The link broke: end it with `error` and stop its tasks."""
        if self._error is None:
            self._error = _unavailable(error)
        self.end(self._error)
        self._stream_ended.set()
        if self._scope is not None:
            self._scope.cancel()

    def _open(self, authority: str, scheme: str) -> None:
        conn = self._h2
        conn.initiate_connection()
        conn.increment_flow_control_window(_WINDOW_BYTES - conn.local_settings.initial_window_size)
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW_BYTES})
        headers = [
            (":method", "POST"),
            (":scheme", scheme),
            (":path", LINK),
            (":authority", authority),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("user-agent", "asgard-mesh"),
        ]
        conn.send_headers(_STREAM, headers)

    # Writing ----------------------------------------------------------------------------------
    def before_io_wait(self, timeout: float) -> None:
        """End of a pass of Trio's scheduler: write what was queued during it."""
        if self._due:
            self._pump()

    def _pump(self) -> None:
        """Encode queued messages within the peer's window and write them without waiting."""
        self._due = False
        if self._wire.pending or self._stream_ended.is_set():
            return  # the drain task resumes once the socket has taken the rest
        try:
            sent = self._encode_queued()
            if not self._outbox and not self._held and self._closing:
                self.end(None)  # Trio closed the link and everything queued is on its way
                self._h2.end_stream(_STREAM)
                self._stream_ended.set()
            self._write_output()
        except _LINK_ERRORS as exc:
            self._fail(exc)
            return
        if sent:
            self._peer.far_credit(sent)

    def _encode_queued(self) -> int:
        """Encode queued messages into DATA within the peer's window; returns how many were taken."""
        conn, outbox, taken = self._h2, self._outbox, 0
        while self._held or outbox:
            if not self._held:
                batch = [outbox.popleft() for _ in range(min(len(outbox), _MAX_WRITE_BATCH))]
                self._held = encode_batch(batch)
                taken += len(batch)
            size = min(conn.local_flow_control_window(_STREAM), conn.max_outbound_frame_size)
            if size <= 0:
                break  # the rest waits for a WINDOW_UPDATE (RFC 9113 §6.9)
            conn.send_data(_STREAM, self._held[:size])
            self._held = self._held[size:]
        return taken

    def _write_output(self) -> None:
        data = self._h2.data_to_send()
        if data and self._wire.write_nowait(data):
            self._drain_wake.set()

    async def _drain_main(self) -> None:
        """Write what the kernel did not take at once, then resume encoding."""
        try:
            while True:
                await self._drain_wake.wait()
                self._drain_wake = trio.Event()
                await self._wire.drain()
                self._pump()
        except _LINK_ERRORS as exc:
            self._fail(exc)

    # Reading ----------------------------------------------------------------------------------
    async def _reader_main(self) -> None:
        try:
            await self._read()
            self._error = self._status_error
        except _LINK_ERRORS as exc:
            self._fail(exc)
        except PeerDecodeError as exc:
            self._fail(Unavailable(f"the peer sent a malformed message: {exc}"))
        self.end(self._error)
        self._stream_ended.set()
        if self._scope is not None:
            self._scope.cancel()

    async def _read(self) -> None:
        """Read until the server ends the stream."""
        inbound = bytearray()
        while True:
            data = await self._wire.receive()
            if not data:
                raise Unavailable("the peer closed the connection")
            for event in self._h2.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self._h2.acknowledge_received_data(event.flow_controlled_length, _STREAM)
                    inbound += event.data
                    await self._messages(inbound)
                elif self._other_event(event):
                    return
            self._write_output()

    async def _messages(self, inbound: bytearray) -> None:
        """Hand every complete message in `inbound` to the node; keep the rest."""
        pos = 0
        try:
            while len(inbound) - pos >= _PREFIX.size:
                compressed, size = _PREFIX.unpack_from(inbound, pos)
                if compressed:
                    raise Unavailable("the peer sent a compressed message (not supported)")
                if size > self._max_message:
                    raise Unavailable(f"the peer sent a message of {size} bytes (limit {self._max_message})")
                end = pos + _PREFIX.size + size
                if end > len(inbound):
                    break
                message = decode(bytes(inbound[pos + _PREFIX.size : end]))
                pos = end
                while not self._credits:
                    self._reader_wake = trio.Event()
                    await self._reader_wake.wait()
                self._reader_wake = None
                if not self._ended:
                    self._credits -= 1
                    self._peer.far_deliver(message)
        finally:
            del inbound[:pos]

    def _other_event(self, event: h2.events.Event) -> bool:
        """React to a non-DATA event; True once the server has ended the stream."""
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            self._headers(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            return True
        elif isinstance(event, h2.events.StreamReset):
            raise Unavailable(f"the peer reset the link (HTTP/2 error {event.error_code})")
        elif isinstance(event, h2.events.ConnectionTerminated):
            raise Unavailable(f"the peer closed the connection (GOAWAY, error {event.error_code})")
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._due = True  # the window may have opened for messages held back
        return False

    def _headers(self, headers: list[tuple[str, str]] | list[tuple[bytes, bytes]]) -> None:
        fields = {str(k): str(v) for k, v in headers}
        status = fields.get(":status")
        if status is not None and status != "200":
            raise Unavailable(f"the peer answered HTTP status {status}")
        kind = fields.get("content-type")
        if kind is not None and not kind.startswith("application/grpc"):
            raise Unavailable(f"the peer answered content-type {kind[:60]!r}")
        grpc_status = fields.get("grpc-status")
        if grpc_status is not None and grpc_status != "0":
            detail = fields.get("grpc-message", "")[:200]
            self._status_error = Unavailable(f"the peer ended the link: grpc-status {grpc_status} {detail}")


@asynccontextmanager
async def open_link(
    host: str,
    port: int,
    *,
    window: int,
    queue_max: int,
    connect_timeout_s: float,
    tls: ssl.SSLContext | None = None,
    tls_server_name: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> AsyncIterator[PeerStream]:
    """Dial `host:port` from Trio and open a link; it is closed when the block ends.

    A peer that cannot be reached shows up as `Unavailable` from the first `receive()`.
    """
    peer = PeerStream(_call, window=window, queue_max=queue_max, remote=f"{host}:{port}")
    end = _DialledEnd(peer, window, max_message_bytes)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_dial, end, host, port, connect_timeout_s, tls, tls_server_name)
            try:
                yield peer
            finally:
                peer.close()
                with trio.CancelScope(shield=True), trio.move_on_after(END_WAIT_S):
                    await end.finished.wait()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery is an implementation detail: the block's own error comes out as itself.
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
        raise error from error.__cause__


async def _dial(
    end: _DialledEnd,
    host: str,
    port: int,
    connect_timeout_s: float,
    tls: ssl.SSLContext | None,
    tls_server_name: str | None,
) -> None:
    try:
        try:
            with trio.fail_after(connect_timeout_s):
                wire = await connect_wire(host, port, tls, tls_server_name)
        except _LINK_ERRORS as exc:
            end.end(_unavailable(exc))
            return
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        await end.run(wire, authority, "https" if tls is not None else "http")
    finally:
        end.finished.set()
