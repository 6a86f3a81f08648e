"""Bench server kind `h2trio`: the reference's answers served the other way the node could serve
gRPC, with h2 on the Trio thread itself (as the mesh link is, node/mesh/_h2end.py) and no thread
hand-over. A measurement for the design decision in docs/grpc.md §11, not part of the node.

What it does per call is what a gRPC server must do at the least, the same as the `plain`
grpclib server: HTTP/2 through h2 (HPACK, flow control both ways, trailers), the path looked up,
`content-type: application/grpc` and an `authorization` entry required (refused with trailers
otherwise), Length-Prefixed-Messages cut out of DATA, betterproto2 to decode and encode. Send
answers an ack, Connect echoes each frame. One task per connection; answers are written in the
same pass that read their request.
"""

from __future__ import annotations

import signal
import struct
from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

from protos.gen.asgard import v1 as pb

SEND = b"/asgard.v1.Routing/Send"
CONNECT = b"/asgard.v1.Routing/Connect"
_PREFIX = struct.Struct(">BI")
_MAX_MESSAGE = 4 << 20
_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]


class _Call:
    __slots__ = ("buffer", "headers_sent", "path", "pending", "trailers")

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.buffer = bytearray()
        self.headers_sent = False
        self.pending: deque[bytes] = deque()  # DATA waiting for flow-control window
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent once `pending` is empty


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.stream = stream
        self.calls: dict[int, _Call] = {}

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(4 << 20)
        await self.stream.send_all(self.h2.data_to_send())
        while data := await self.stream.receive_some(1 << 16):
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                await self.stream.send_all(self.h2.data_to_send())
                return
            for event in events:
                self._on(event)
            if out := self.h2.data_to_send():
                await self.stream.send_all(out)

    def _on(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            call = self.calls.get(event.stream_id)
            if call is not None and call.trailers is None:
                call.buffer += event.data
                self._messages(event.stream_id, call)
        elif isinstance(event, h2.events.StreamEnded):
            call = self.calls.get(event.stream_id)
            if call is not None and call.path == CONNECT and call.trailers is None:
                self._finish(event.stream_id, call, b"0", b"")
        elif isinstance(event, h2.events.StreamReset):
            self.calls.pop(event.stream_id, None)
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id, call in list(self.calls.items()):
                self._flush(stream_id, call)

    def _request(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        path = headers.get(b":path", b"")
        call = _Call(path)
        self.calls[stream_id] = call
        if path not in (SEND, CONNECT):
            self._finish(stream_id, call, b"12", b"unknown method")  # UNIMPLEMENTED
        elif not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self._finish(stream_id, call, b"3", b"not a gRPC request")
        elif not headers.get(b"authorization", b"").startswith(b"Bearer "):
            self._finish(stream_id, call, b"16", b"a token is required")  # UNAUTHENTICATED

    def _messages(self, stream_id: int, call: _Call) -> None:
        buffer = call.buffer
        while len(buffer) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(buffer)
            if compressed or length > _MAX_MESSAGE:
                self._finish(stream_id, call, b"8", b"message refused")  # RESOURCE_EXHAUSTED
                return
            if len(buffer) < _PREFIX.size + length:
                return
            body = bytes(buffer[_PREFIX.size : _PREFIX.size + length])
            del buffer[: _PREFIX.size + length]
            if call.path == SEND:
                frame = pb.SendRequest.parse(body).frame
                message_id = int.from_bytes(frame[4:12], "big") if len(frame) >= 12 else 0
                ack = pb.SendAck(message_id=message_id, status=pb.DeliveryStatus.DELIVERED, recipients=1)
                self._send(stream_id, call, bytes(ack))
                self._finish(stream_id, call, b"0", b"")
                return
            self._send(stream_id, call, bytes(pb.ConnectFrame(frame=pb.ConnectFrame.parse(body).frame)))

    def _send(self, stream_id: int, call: _Call, body: bytes) -> None:
        if not call.headers_sent:
            self.h2.send_headers(stream_id, _RESPONSE_HEADERS)
            call.headers_sent = True
        call.pending.append(_PREFIX.pack(0, len(body)) + body)
        self._flush(stream_id, call)

    def _flush(self, stream_id: int, call: _Call) -> None:
        pending = call.pending
        while pending:
            window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if window <= 0:
                return
            data = pending.popleft()
            if len(data) > window:
                pending.appendleft(data[window:])
                data = data[:window]
            self.h2.send_data(stream_id, data)
        if call.trailers is not None:
            self.h2.send_headers(stream_id, call.trailers, end_stream=True)
            del self.calls[stream_id]

    def _finish(self, stream_id: int, call: _Call, status: bytes, message: bytes) -> None:
        """End the call with `grpc-status` once every DATA before it is out."""
        trailers = [(b"grpc-status", status)] + ([(b"grpc-message", message)] if message else [])
        call.trailers = trailers if call.headers_sent else _RESPONSE_HEADERS + trailers  # or Trailers-Only
        self._flush(stream_id, call)


async def _connection(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            await _Connection(stream).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


def main(port: int) -> None:
    async def serve() -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, _connection, listeners)
                print(f"READY {port}", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(serve)
