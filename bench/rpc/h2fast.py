"""Bench server kind `h2fast-node`: `h2trio-node` (bench/rpc/h2trio.py) in the mesh link's form.
The other design at its best, as a measurement for docs/grpc.md §11, not part of the node.

Two things change from `h2trio-node`, both taken from the mesh link (node/mesh/_h2end.py):

- **Plain DATA frames bypass h2 both ways.** A DATA frame that is not padded, has no END_STREAM
  and sits outside a header block, on a call that is open, is cut out of the received bytes here
  and acknowledged here (a WINDOW_UPDATE once half the stream window is used). Outgoing messages
  are framed here, within the peer's windows, and those windows are shrunk as h2's `send_data`
  would shrink them. h2 still handles every other frame: the preface, SETTINGS, HEADERS and
  trailers, WINDOW_UPDATE from the client, RST_STREAM, GOAWAY, and DATA that ends a stream.
- **Writes go to the socket at once** (a non-blocking `send`, node/mesh/_wire.py) from the task
  that produced them. There is no writer task; a drain task waits only when the kernel did not
  take everything.
"""

from __future__ import annotations

import contextlib
from typing import Any

import h2.exceptions
import trio

from bench.rpc.h2trio import _Call, _NodeConnection, take
from node.mesh._h2frames import DATA, END_STREAM, HEAD_BYTES, PADDED, data_head, opens_block, parse_head
from node.mesh._h2frames import window_update as window_update_frame
from node.mesh._wire import PlainWire, accept_wire

_STREAM_WINDOW = 65_535  # h2's default initial window, which this server leaves as it is


class _FastConnection(_NodeConnection):
    def __init__(self, stream: trio.SocketStream, nursery: trio.Nursery, node: Any, wire: PlainWire) -> None:
        super().__init__(stream, nursery, node)
        self.wire = wire
        self._out: list[bytes] = []
        self._in_block = False
        self._unacked: dict[int, int] = {}
        self._drain = trio.Event()
        self._preface = 24  # bytes of the client preface (RFC 9113 §3.4) still due: h2 takes them

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(4 << 20)
        self.nursery.start_soon(self._drainer)
        self.kick()
        rest = b""
        while data := await self.wire.receive():
            try:
                rest = await self._frames(rest + data if rest else data)
            except h2.exceptions.ProtocolError:
                break
            self.kick()
        self.kick()

    async def _frames(self, data: bytes) -> bytes:
        """Take plain DATA frames here, hand the rest to h2 in order; return an incomplete tail."""
        pos, size, slow = 0, len(data), -1
        if self._preface:
            pos = min(self._preface, size)
            self._preface -= pos
            slow = 0
        while size - pos >= HEAD_BYTES:
            length, kind, flags, stream_id = parse_head(data, pos)
            end = pos + HEAD_BYTES + length
            if length > self.h2.max_inbound_frame_size:
                raise h2.exceptions.ProtocolError("frame too large")
            if end > size:
                break
            if kind == DATA and not flags & (END_STREAM | PADDED) and not self._in_block:
                if slow >= 0:  # h2 first: the frames before may open the stream
                    await self._to_h2(data[slow:pos])
                    slow = -1
                call = self.calls.get(stream_id)
                if call is not None and call.trailers is None:
                    self._acknowledge(stream_id, length)
                    call.buffer += data[pos + HEAD_BYTES : end]
                    await self._messages(stream_id, call)
                    pos = end
                    continue
            block = opens_block(kind, flags)
            if block is not None:
                self._in_block = block
            if slow < 0:
                slow = pos
            pos = end
        if slow >= 0:
            await self._to_h2(data[slow:pos])
        return data[pos:]

    async def _to_h2(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            await self._on(event)

    def _acknowledge(self, stream_id: int, length: int) -> None:
        unacked = self._unacked.get(stream_id, 0) + length
        if unacked >= _STREAM_WINDOW // 2:
            self._own(window_update_frame(0, unacked) + window_update_frame(stream_id, unacked))
            unacked = 0
        self._unacked[stream_id] = unacked

    def _own(self, frames: bytes) -> None:
        """Queue frames made here behind what h2 has queued before them."""
        earlier = self.h2.data_to_send()
        if earlier:
            self._out.append(earlier)
        self._out.append(frames)

    def _write_pending(self, stream_id: int, call: _Call) -> bool:
        """Frame the call's pending messages here within the peer's windows."""
        pending, conn = call.pending, self.h2
        stream = conn.streams.get(stream_id)
        if stream is None:
            return False
        while pending:
            window = min(conn.outbound_flow_control_window, stream.outbound_flow_control_window)
            window = min(window, conn.max_outbound_frame_size)
            if window <= 0:
                return False
            data = take(pending, window)
            self._own(data_head(len(data), stream_id) + data)
            # What h2's send_data does besides building frame objects: the windows shrink.
            conn.outbound_flow_control_window -= len(data)
            stream.outbound_flow_control_window -= len(data)
        return True

    def _call_done(self, stream_id: int) -> None:
        self._unacked.pop(stream_id, None)

    def kick(self) -> None:
        """Write what is queued, h2's frames after ours, without waiting."""
        out = self._out
        later = self.h2.data_to_send()
        if later:
            out.append(later)
        if not out:
            return
        data = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        if self.wire.write_nowait(data):
            self._drain.set()

    async def _drainer(self) -> None:
        while True:
            await self._drain.wait()
            self._drain = trio.Event()
            await self.wire.drain()


async def _connection(stream: trio.SocketStream, node: Any) -> None:
    wire = await accept_wire(stream, None)
    try:
        async with trio.open_nursery() as nursery:
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await _FastConnection(stream, nursery, node, wire).run()
            nursery.cancel_scope.cancel()
    finally:
        wire.close()
