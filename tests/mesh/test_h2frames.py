"""The link's DATA frames taken around h2 (`node.mesh._h2end`, `_h2frames`), seen from a raw
HTTP/2 client (h2 as the client engine, frames written by hand where a client would not) on a
real socket: padding, messages across and within frames, WINDOW_UPDATE both ways, and every frame
that is not plain DATA of the open stream still refused as h2 refuses it."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import trio

from node.mesh._h2end import WINDOW_BYTES
from node.mesh._h2frames import END_HEADERS, END_STREAM, HEAD, HEADERS, PADDED, data_head
from node.mesh._peer import LINK
from node.mesh._peer_codec import decode, encode
from node.mesh._peer_model import Handoff, PeerMessage, Ping
from tests.mesh.test_dial import LIMIT_S, Acceptor, serve

_REQUEST = [
    (":method", "POST"), (":scheme", "http"), (":path", LINK), (":authority", "test"),
    ("te", "trailers"), ("content-type", "application/grpc"),
]  # fmt: skip


def grpc(message: PeerMessage) -> bytes:
    """A message with its gRPC length prefix."""
    body = encode(message)
    return b"\x00" + len(body).to_bytes(4, "big") + body


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return HEAD.pack(len(payload) >> 16, len(payload) & 0xFFFF, kind, flags, stream) + payload


class RawClient:
    """A dialler that speaks HTTP/2 through h2 but may also write frames h2 would not."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.events: list[h2.events.Event] = []
        self.inbound = b""
        self.closed = False

    @classmethod
    async def open(cls, port: int) -> RawClient:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        client = cls(sock)
        client.h2.initiate_connection()
        client.h2.send_headers(1, _REQUEST)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.sock.send(data)

    async def send_raw(self, data: bytes) -> None:
        await self.flush()
        await self.sock.send(data)

    async def read(self) -> None:
        """Read once more; record the events, acknowledge DATA (as a client does)."""
        try:
            data = await self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.h2.receive_data(data):
            self.events.append(event)
            if isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.inbound += event.data
        await self.flush()

    def messages(self) -> list[PeerMessage]:
        out, pos = [], 0
        while len(self.inbound) - pos >= 5:
            size = int.from_bytes(self.inbound[pos + 1 : pos + 5], "big")
            if len(self.inbound) < pos + 5 + size:
                break
            out.append(decode(self.inbound[pos + 5 : pos + 5 + size]))
            pos += 5 + size
        return out

    async def until_closed(self) -> None:
        while not self.closed:
            await self.read()


async def test_padded_and_split_data_frames_deliver_every_message_in_order(nursery: trio.Nursery) -> None:
    node = Acceptor()
    _, port = await serve(nursery, node)
    stream = b"".join(grpc(Ping(n)) for n in range(1, 6))
    with trio.fail_after(LIMIT_S):
        client = await RawClient.open(port)
        with client.sock:
            pad = 7
            padded = bytes([pad]) + stream[:9] + b"\x00" * pad  # Ping 1 and the start of Ping 2
            await client.send_raw(frame(0, PADDED, 1, padded))
            await client.send_raw(data_head(len(stream) - 9, 1) + stream[9:])  # the rest, whole
            while len(client.messages()) < 5:
                await client.read()
    assert node.received == [Ping(n) for n in range(1, 6)]
    assert client.messages() == [Ping(n) for n in range(1, 6)]


async def test_window_updates_both_ways_after_half_the_window(nursery: trio.Nursery) -> None:
    """2.4 MiB each way: the listener gives the window back once half of it was used (connection
    and stream), and waits for the client's WINDOW_UPDATE before sending beyond the client's."""
    node = Acceptor()
    _, port = await serve(nursery, node)
    count, size = 40, 60_000  # under the pre-authentication limit of 64 KiB per message
    messages = [Handoff(n, "d", (bytes([n]) * size,)) for n in range(count)]
    with trio.fail_after(LIMIT_S):
        client = await RawClient.open(port)
        with client.sock:
            for message in messages:
                data = grpc(message)
                while data:  # h2 keeps to the listener's window and frame size
                    room = min(client.h2.local_flow_control_window(1), client.h2.max_outbound_frame_size)
                    if not room:
                        await client.flush()
                        await client.read()
                        continue
                    client.h2.send_data(1, data[:room])
                    data = data[room:]
            await client.flush()
            while len(client.messages()) < count:
                await client.read()
    assert node.received == messages and client.messages() == messages
    updates = [e for e in client.events if isinstance(e, h2.events.WindowUpdated)]
    assert {e.stream_id for e in updates} >= {0, 1}
    assert all(e.delta >= WINDOW_BYTES // 2 for e in updates if e.stream_id == 1)


async def test_data_inside_a_header_block_is_refused(nursery: trio.Nursery) -> None:
    node = Acceptor()
    listener, port = await serve(nursery, node)
    with trio.fail_after(LIMIT_S):
        client = await RawClient.open(port)
        with client.sock:
            await client.send_raw(data_head(len(grpc(Ping(1))), 1) + grpc(Ping(1)))
            while client.messages() != [Ping(1)]:
                await client.read()
            trailers = client.h2.encoder.encode([("x-trailer", "1")])
            # Trailers without END_HEADERS: only CONTINUATION may follow (RFC 9113 §6.2).
            await client.send_raw(frame(HEADERS, END_STREAM, 1, trailers))
            await client.send_raw(data_head(len(grpc(Ping(2))), 1) + grpc(Ping(2)))
            await client.until_closed()
        await listener.wait_idle()
    assert node.received == [Ping(1)]
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)


async def test_a_frame_beyond_the_frame_size_is_refused_without_waiting_for_it(
    nursery: trio.Nursery,
) -> None:
    """Only the header of a 1 MiB DATA frame is sent: the listener ends the connection with
    FRAME_SIZE_ERROR at once instead of buffering the frame."""
    node = Acceptor()
    listener, port = await serve(nursery, node)
    with trio.fail_after(LIMIT_S):
        client = await RawClient.open(port)
        with client.sock:
            await client.send_raw(data_head(1 << 20, 1) + b"\x00" * 100)
            await client.until_closed()
        await listener.wait_idle()
    assert node.received == []
    ends = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in ends] == [h2.errors.ErrorCodes.FRAME_SIZE_ERROR]


async def test_headers_then_data_in_one_write_reach_the_node(nursery: trio.Nursery) -> None:
    """The request's HEADERS (with a CONTINUATION) and the first DATA in one segment: h2 opens
    the stream first, then the DATA is the link's."""
    node = Acceptor()
    _, port = await serve(nursery, node)
    with trio.fail_after(LIMIT_S):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        client = RawClient(sock)
        with sock:
            client.h2.initiate_connection()
            opening = client.h2.data_to_send()
            client.h2.send_headers(1, _REQUEST)
            block = client.h2.data_to_send()[9:]  # one HEADERS frame: split it in two
            opening += frame(HEADERS, 0, 1, block[:5]) + frame(0x9, END_HEADERS, 1, block[5:])
            opening += data_head(len(grpc(Ping(9))), 1) + grpc(Ping(9))
            await sock.send(opening)
            while client.messages() != [Ping(9)]:
                await client.read()
    assert node.received == [Ping(9)]
