"""Bench server kinds `h2trio` and `h2trio-node`: gRPC served the other way the node could serve
it, with h2 on the Trio thread itself (as the mesh link is, node/mesh/_h2end.py) and no thread
hand-over. Measurements for the design decision in docs/grpc.md §11, not part of the node.

What it does per call is what a gRPC server must do at the least, the same as the `plain`
grpclib server: HTTP/2 through h2 (HPACK, flow control both ways, trailers), the path looked up,
`content-type: application/grpc` and an `authorization` entry required (refused with trailers
otherwise), Length-Prefixed-Messages cut out of DATA, betterproto2 to decode and encode.

- `h2trio`: the reference's answers (Send = ack, Connect = echo), written in the pass that read
  the request.
- `h2trio-node`: the whole node (`run_node`, as server kind `node`) behind it. Tokens are checked
  by the node's own authenticator (cached per connection, as the router's gate caches them).
  `Send` calls the node backend's `send` (the router's routing, device check included), and
  `Connect` runs the relay's device session over Trio channels (`run_channel_session` through the
  backend, as the router does). Frames the node sends go out through h2 from the session's own
  task, without a pump in between.

One reader task and one writer task per connection. The writer sends what h2 has to send
whenever the reader or a session has given it something. Every frame goes through h2, DATA
included: the straightforward form of the design, not the mesh link's (its own DATA framing,
written in line without a writer task).
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import struct
from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

from node.rpc import _convert as cv
from protos.gen.asgard import v1 as pb

SEND = b"/asgard.v1.Routing/Send"
CONNECT = b"/asgard.v1.Routing/Connect"
_PREFIX = struct.Struct(">BI")
_MAX_MESSAGE = 4 << 20
_WINDOW = 64  # frames a Connect session may have waiting in each direction (as rpc.stream_window)
_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def take(pending: deque[bytes], window: int) -> bytes:
    """Pop at most `window` bytes off the front of `pending` (the rest stays first in line)."""
    data = pending.popleft()
    if len(data) > window:
        pending.appendleft(data[window:])
        data = data[:window]
    return data


class _Call:
    __slots__ = ("buffer", "drained", "frames_in", "headers", "headers_sent", "path", "pending", "trailers")

    def __init__(self, path: bytes, headers: dict[bytes, bytes]) -> None:
        self.path = path
        self.headers = headers
        self.buffer = bytearray()
        self.headers_sent = False
        self.pending: deque[bytes] = deque()  # DATA waiting for flow-control window
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent once `pending` is empty
        self.frames_in: trio.MemorySendChannel[bytes] | None = None  # h2trio-node's Connect
        self.drained: trio.Event | None = None  # set when `pending` empties (a waiting sender)


class _Connection:
    """One client connection; `_message` answers a request message (the reference's way)."""

    def __init__(self, stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.stream = stream
        self.nursery = nursery
        self.calls: dict[int, _Call] = {}
        self._dirty = trio.Event()

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(4 << 20)
        self.nursery.start_soon(self._writer)
        self.kick()
        while data := await self.stream.receive_some(1 << 16):
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                break
            for event in events:
                await self._on(event)
            self.kick()
        self.kick()

    def kick(self) -> None:
        """Have the writer send what h2 has to send."""
        self._dirty.set()

    async def _writer(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            if out := self.h2.data_to_send():
                await self.stream.send_all(out)

    async def _on(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            await self._request(event.stream_id, dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            call = self.calls.get(event.stream_id)
            if call is not None and call.trailers is None:
                call.buffer += event.data
                await self._messages(event.stream_id, call)
        elif isinstance(event, h2.events.StreamEnded):
            call = self.calls.get(event.stream_id)
            if call is not None and call.path == CONNECT and call.trailers is None:
                self._input_ended(event.stream_id, call)
        elif isinstance(event, h2.events.StreamReset):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                call.trailers = []  # nothing more goes out on it (a session's sends break)
                if call.frames_in is not None:
                    call.frames_in.close()
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id, call in list(self.calls.items()):
                self._flush(stream_id, call)

    async def _request(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        path = headers.get(b":path", b"")
        call = _Call(path, headers)
        self.calls[stream_id] = call
        if path not in (SEND, CONNECT):
            self.finish(stream_id, call, b"12", b"unknown method")  # UNIMPLEMENTED
        elif not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self.finish(stream_id, call, b"3", b"not a gRPC request")
        elif not headers.get(b"authorization", b"").startswith(b"Bearer "):
            self.finish(stream_id, call, b"16", b"a token is required")  # UNAUTHENTICATED

    async def _messages(self, stream_id: int, call: _Call) -> None:
        buffer = call.buffer
        while len(buffer) >= _PREFIX.size and call.trailers is None:
            compressed, length = _PREFIX.unpack_from(buffer)
            if compressed or length > _MAX_MESSAGE:
                self.finish(stream_id, call, b"8", b"message refused")  # RESOURCE_EXHAUSTED
                return
            if len(buffer) < _PREFIX.size + length:
                return
            body = bytes(buffer[_PREFIX.size : _PREFIX.size + length])
            del buffer[: _PREFIX.size + length]
            await self._message(stream_id, call, body)

    async def _message(self, stream_id: int, call: _Call, body: bytes) -> None:
        if call.path == SEND:
            frame = pb.SendRequest.parse(body).frame
            message_id = int.from_bytes(frame[4:12], "big") if len(frame) >= 12 else 0
            ack = pb.SendAck(message_id=message_id, status=pb.DeliveryStatus.DELIVERED, recipients=1)
            self.send(stream_id, call, bytes(ack))
            self.finish(stream_id, call, b"0", b"")
            return
        self.send(stream_id, call, bytes(pb.ConnectFrame(frame=pb.ConnectFrame.parse(body).frame)))

    def _input_ended(self, stream_id: int, call: _Call) -> None:
        self.finish(stream_id, call, b"0", b"")

    def send(self, stream_id: int, call: _Call, body: bytes) -> None:
        """Queue one message on the call's stream (h2 writes it as the window allows)."""
        if not call.headers_sent:
            self.h2.send_headers(stream_id, _RESPONSE_HEADERS)
            call.headers_sent = True
        call.pending.append(_PREFIX.pack(0, len(body)) + body)
        self._flush(stream_id, call)

    def _flush(self, stream_id: int, call: _Call) -> None:
        """Write what the window allows; once all is out, wake a waiting sender and send the
        trailers if the call has ended."""
        if not self._write_pending(stream_id, call):
            return
        if call.drained is not None:
            call.drained.set()
            call.drained = None
        if call.trailers is not None and self.calls.get(stream_id) is call:
            self.h2.send_headers(stream_id, call.trailers, end_stream=True)
            del self.calls[stream_id]
            self._call_done(stream_id)

    def _write_pending(self, stream_id: int, call: _Call) -> bool:
        """Hand the call's pending DATA to h2 within the peer's window; True once all is out."""
        pending = call.pending
        while pending:
            window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if window <= 0:
                return False
            self.h2.send_data(stream_id, take(pending, window))
        return True

    def _call_done(self, stream_id: int) -> None:
        """A call's stream has ended on our side (for subclasses' own per-stream state)."""

    def finish(self, stream_id: int, call: _Call, status: bytes, message: bytes) -> None:
        """End the call with `grpc-status` once every DATA before it is out."""
        if call.trailers is not None:
            return
        trailers = [(b"grpc-status", status)] + ([(b"grpc-message", message)] if message else [])
        call.trailers = trailers if call.headers_sent else _RESPONSE_HEADERS + trailers  # or Trailers-Only
        if call.frames_in is not None:
            call.frames_in.close()
        self._flush(stream_id, call)


class _NodeConnection(_Connection):
    """The node behind the connection: its authenticator, its Send and its relay sessions."""

    def __init__(self, stream: trio.SocketStream, nursery: trio.Nursery, node: Any) -> None:
        super().__init__(stream, nursery)
        self.node = node
        self._principals: dict[bytes, Any] = {}

    async def _request(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        await super()._request(stream_id, headers)
        call = self.calls.get(stream_id)
        if call is None or call.trailers is not None:
            return
        principal = await self._principal(stream_id, call)
        if principal is not None and call.path == CONNECT:
            send, receive = trio.open_memory_channel[bytes](_WINDOW)
            call.frames_in = send
            self.nursery.start_soon(self._session, stream_id, call, principal, receive)

    async def _principal(self, stream_id: int, call: _Call) -> Any:
        token = call.headers[b"authorization"][len(b"Bearer ") :]
        principal = self._principals.get(token)
        if principal is None:
            try:
                principal = await self.node.authenticator.authenticate(token.decode("ascii"))
            except Exception:
                self.finish(stream_id, call, b"16", b"unknown token")
                return None
            self._principals[token] = principal
        return principal

    async def _message(self, stream_id: int, call: _Call, body: bytes) -> None:
        if call.path == SEND:
            principal = self._principals[call.headers[b"authorization"][len(b"Bearer ") :]]
            frame = pb.SendRequest.parse(body).frame
            try:
                result = self.node.backend.send(principal, frame)
                if inspect.isawaitable(result):  # a DURABLE frame: its queue commit
                    result = await result
            except Exception as exc:
                self.finish(stream_id, call, b"13", str(exc).encode()[:200])
                return
            status = cv.DELIVERY_STATUS[result.status]
            ack = pb.SendAck(message_id=result.message_id, status=status, recipients=result.recipients)
            self.send(stream_id, call, bytes(ack))
            self.finish(stream_id, call, b"0", b"")
            return
        frames_in = call.frames_in
        if frames_in is not None:
            await frames_in.send(pb.ConnectFrame.parse(body).frame)  # a full window holds the reader

    def _input_ended(self, stream_id: int, call: _Call) -> None:
        if call.frames_in is not None:
            call.frames_in.close()  # the session ends its input; its trailers follow its end

    async def _session(
        self, stream_id: int, call: _Call, principal: Any, frames_in: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        frames_out = _FramesOut(self, stream_id, call)
        status, message = b"0", b""
        try:
            await self.node.backend.connect(principal, frames_in, frames_out)
        except Exception as exc:
            status, message = b"14", str(exc).encode()[:200]
        self.finish(stream_id, call, status, message)
        self.kick()


class _FramesOut(trio.abc.SendChannel[bytes]):
    """A Connect session's frames to the client: written to h2 in the sender's own step."""

    def __init__(self, connection: _Connection, stream_id: int, call: _Call) -> None:
        self._connection = connection
        self._stream_id = stream_id
        self._call = call

    def send_nowait(self, frame: bytes) -> None:
        call = self._call
        if call.trailers is not None:
            raise trio.BrokenResourceError
        if len(call.pending) >= _WINDOW:  # the client is not reading: the session waits
            raise trio.WouldBlock
        self._connection.send(self._stream_id, call, bytes(pb.ConnectFrame(frame=frame)))
        self._connection.kick()

    async def send(self, value: bytes) -> None:
        await trio.lowlevel.checkpoint()
        while True:
            try:
                self.send_nowait(value)
                return
            except trio.WouldBlock:
                drained = self._call.drained = self._call.drained or trio.Event()
                await drained.wait()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def _connection(stream: trio.SocketStream, node: Any = None) -> None:
    async with stream, trio.open_nursery() as nursery:
        connection = _NodeConnection(stream, nursery, node) if node else _Connection(stream, nursery)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await connection.run()
        nursery.cancel_scope.cancel()


async def serve(port: int, node: Any = None, *, ready: str | None = None, fast: bool = False) -> None:
    """Serve on 127.0.0.1:`port` until SIGTERM/SIGINT; print "READY ..." once listening. With
    `fast`, the node is served in the mesh link's form (bench/rpc/h2fast.py)."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            handler: Any = _connection if node is None else (lambda s: _connection(s, node))
            if fast:
                from bench.rpc import h2fast

                handler = lambda s: h2fast._connection(s, node)  # noqa: E731
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            print(ready or f"READY {port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(port: int) -> None:
    trio.run(serve, port)
