"""The client's WebSocket layer (node.client._ws) against a raw RFC 6455 server on loopback.

The server side is written by hand here (bytes on a real socket), so every case the node's engine
never produces is covered: fragments, pings, oversize messages, refusals, closes, a lost peer.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from node.client._types import Deadlines, Pending
from node.client._ws import ClientWebSocket, WsClosed, WsHandshakeError, WsRejected, encode_client_frame
from wire.ws import accept_key, unmask_python

TIMEOUT_S = 5
Server = Callable[[trio.SocketStream, bytes], Awaitable[None]]


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """An unmasked server frame."""
    head = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        return bytes((head, len(payload))) + payload
    return struct.pack("!BBH", head, 126, len(payload)) + payload


async def read_client_frame(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bytes, bool]:
    """(opcode, unmasked payload, was masked) of the next client frame (payloads < 126 bytes)."""
    while len(buf) < 2 or len(buf) < 6 + (buf[1] & 0x7F):
        data = await stream.receive_some(4096)
        assert data, "the client closed the connection"
        buf += data
    opcode, masked, length = buf[0] & 0x0F, bool(buf[1] & 0x80), buf[1] & 0x7F
    payload = unmask_python(bytes(buf[6 : 6 + length]), bytes(buf[2:6]))
    del buf[: 6 + length]
    return opcode, payload, masked


async def accept_upgrade(stream: trio.SocketStream, status: int = 101) -> bytes:
    """Read the upgrade request, answer it; return the request."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(4096)
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))  # fmt: skip
    if status != 101:
        await stream.send_all(b"HTTP/1.1 %d Unauthorized\r\nContent-Length: 0\r\n\r\n" % status)
        return request
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
    )
    return request


@asynccontextmanager
async def connected(
    server: Server, *, status: int = 101, max_bytes: int = 1 << 20
) -> AsyncIterator[ClientWebSocket]:
    """A client connected to a one-connection server running `server(stream, request)`."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(serve_one, server=server, status=status), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        ws = ClientWebSocket(stream, max_message_bytes=max_bytes)
        try:
            with trio.fail_after(TIMEOUT_S):
                await ws.handshake("127.0.0.1", "/v1/ws", [(b"Authorization", b"Bearer t")])
            yield ws
        finally:
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def serve_one(stream: trio.SocketStream, *, server: Server, status: int) -> None:
    async with stream:
        request = await accept_upgrade(stream, status)
        if status == 101:
            await server(stream, request)


async def test_handshake_sends_headers_and_masks_every_frame() -> None:
    seen: list[tuple[int, bytes, bool]] = []

    async def server(stream: trio.SocketStream, request: bytes) -> None:
        assert b"\r\nAuthorization: Bearer t\r\n" in request
        buf = bytearray()
        seen.append(await read_client_frame(stream, buf))
        await stream.send_all(frame(0x2, b"echo:" + seen[0][1]))

    async with connected(server) as ws:
        with trio.fail_after(TIMEOUT_S):
            await ws.send(b"hello")
            assert await ws.receive() == b"echo:hello"
    assert seen == [(0x2, b"hello", True)]


async def test_fragments_are_joined_and_text_stays_text() -> None:
    async def server(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(frame(0x2, b"ab", fin=False) + frame(0x0, b"cd", fin=False))
        await stream.send_all(frame(0x9, b"in between") + frame(0x0, b"ef"))  # a ping may interleave
        await stream.send_all(frame(0x1, "héllo".encode()))
        await trio.sleep_forever()

    async with connected(server) as ws:
        with trio.fail_after(TIMEOUT_S):
            assert await ws.receive() == b"abcdef"
            assert await ws.receive() == "héllo"


async def test_a_ping_is_answered_with_its_payload() -> None:
    answered = trio.Event()
    pong: list[tuple[int, bytes, bool]] = []

    async def server(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(frame(0x9, b"are you there"))
        pong.append(await read_client_frame(stream, bytearray()))
        answered.set()
        await stream.send_all(frame(0x2, b"after"))
        await trio.sleep_forever()

    async with connected(server) as ws:
        with trio.fail_after(TIMEOUT_S):
            assert await ws.receive() == b"after"  # the pong went out while receiving
            await answered.wait()
    assert pong == [(0xA, b"are you there", True)]


async def test_the_nodes_close_code_is_reported_and_answered() -> None:
    answer: list[tuple[int, bytes, bool]] = []

    async def server(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(frame(0x8, struct.pack("!H", 4000) + b"replaced"))
        answer.append(await read_client_frame(stream, bytearray()))

    async with connected(server) as ws:
        with trio.fail_after(TIMEOUT_S), pytest.raises(WsClosed) as closed:
            await ws.receive()
        assert (closed.value.code, closed.value.reason) == (4000, "replaced")
        with pytest.raises(WsClosed):
            await ws.send(b"too late")
    assert answer[0][0] == 0x8 and answer[0][1][:2] == struct.pack("!H", 4000)


async def test_a_message_over_the_limit_closes_with_1009() -> None:
    answer: list[tuple[int, bytes, bool]] = []

    async def server(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(frame(0x2, bytes(600), fin=False) + frame(0x0, bytes(600)))
        answer.append(await read_client_frame(stream, bytearray()))

    async with connected(server, max_bytes=1000) as ws:
        with trio.fail_after(TIMEOUT_S), pytest.raises(WsClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1009
    assert answer[0][0] == 0x8 and answer[0][1][:2] == struct.pack("!H", 1009)


async def test_a_lost_connection_is_1006() -> None:
    async def server(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(frame(0x2, b"last"))

    async with connected(server) as ws:
        with trio.fail_after(TIMEOUT_S):
            assert await ws.receive() == b"last"
            with pytest.raises(WsClosed) as closed:
                await ws.receive()
        assert closed.value.code == 1006
        await ws.aclose()  # nothing left to close: no error


async def test_a_refused_upgrade_reports_its_status() -> None:
    async def server(stream: trio.SocketStream, request: bytes) -> None:
        raise AssertionError("not reached")

    statuses = []
    try:
        async with connected(server, status=401):
            raise AssertionError("the handshake passed")
    except* WsRejected as group:
        statuses = [exc.status for exc in group.exceptions if isinstance(exc, WsRejected)]
    assert statuses == [401]


# -- the client's own codec: frames the node's engine never sends -------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (bytes((0x82, 0x82)) + b"mask" + b"ab", 1002),  # a masked server frame (§5.1)
        (bytes((0xC2, 0x01)) + b"a", 1002),  # RSV1 without an extension
        (bytes((0x83, 0x00)), 1002),  # unknown data opcode
        (bytes((0x8B, 0x00)), 1002),  # unknown control opcode
        (bytes((0x09, 0x00)), 1002),  # a fragmented ping
        (bytes((0x89, 0x7E, 0x00, 0x7E)) + bytes(126), 1002),  # a ping over 125 bytes
        (bytes((0x80, 0x01)) + b"a", 1002),  # a continuation without a message
        (bytes((0x02, 0x01)) + b"a" + bytes((0x82, 0x01)) + b"b", 1002),  # new message mid-fragment
        (bytes((0x82, 0x7F)) + struct.pack("!Q", 1 << 63), 1002),  # 64-bit length, top bit set
        (bytes((0x81, 0x02)) + b"\xc3\x28", 1007),  # invalid UTF-8 text
        (bytes((0x88, 0x01)) + b"x", 1002),  # a close payload of one byte
        (bytes((0x88, 0x02)) + struct.pack("!H", 1005), 1002),  # a close code never sent (§7.4.1)
        (bytes((0x88, 0x04)) + struct.pack("!H", 1000) + b"\xff\xfe", 1007),  # a bad close reason
    ],
)
async def test_protocol_violations_close_with_their_code(raw: bytes, code: int) -> None:
    answer: list[tuple[int, bytes, bool]] = []

    async def server(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(raw)
        answer.append(await read_client_frame(stream, bytearray()))

    async with connected(server) as ws:
        with trio.fail_after(TIMEOUT_S), pytest.raises(WsClosed) as closed:
            await ws.receive()
        assert closed.value.code == code
        with pytest.raises(WsClosed):
            await ws.send(b"after the close")
    assert answer[0][0] == 0x8 and answer[0][1][:2] == struct.pack("!H", code)


async def test_lengths_of_every_size_byte_by_byte_and_in_one_segment() -> None:
    sizes = [0, 1, 125, 126, 65535, 65536, 70000]

    def big(payload: bytes) -> bytes:
        if len(payload) < 0x10000:
            return frame(0x2, payload)
        return struct.pack("!BBQ", 0x82, 127, len(payload)) + payload

    async def server(stream: trio.SocketStream, request: bytes) -> None:
        wire = b"".join(big(bytes([n % 251]) * n) for n in sizes)
        await stream.send_all(wire[:200])
        for i in range(200, 400):  # byte by byte through the headers of the first frames
            await stream.send_all(wire[i : i + 1])
        await stream.send_all(wire[400:])
        await trio.sleep_forever()

    async with connected(server, max_bytes=1 << 17) as ws:
        with trio.fail_after(TIMEOUT_S):
            for n in sizes:
                assert await ws.receive() == bytes([n % 251]) * n


async def test_an_empty_close_is_1005_and_answered_empty() -> None:
    answer: list[tuple[int, bytes, bool]] = []

    async def server(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(frame(0x8, b""))
        answer.append(await read_client_frame(stream, bytearray()))

    async with connected(server) as ws:
        with trio.fail_after(TIMEOUT_S), pytest.raises(WsClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1005
    assert answer == [(0x8, b"", True)]


async def test_our_close_is_answered_and_reported() -> None:
    async def server(stream: trio.SocketStream, request: bytes) -> None:
        opcode, payload, masked = await read_client_frame(stream, bytearray())
        assert (opcode, payload, masked) == (0x8, struct.pack("!H", 1000) + b"bye", True)
        await stream.send_all(frame(0x8, payload))

    async with connected(server) as ws:
        await ws.aclose(1000, "bye")
        with pytest.raises(WsClosed):
            await ws.send(b"after aclose")
        with trio.fail_after(TIMEOUT_S), pytest.raises(WsClosed) as closed:
            await ws.receive()
        assert (closed.value.code, closed.value.reason) == (1000, "bye")


def test_client_frames_are_masked_with_fresh_keys_and_decode_back() -> None:
    for size in (0, 125, 126, 65535, 65536):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        one, two = encode_client_frame(0x2, payload), encode_client_frame(0x2, payload)
        assert one[0] == 0x82 and one[1] & 0x80
        start = 2 + {125: 0, 126: 2, 127: 8}[max(one[1] & 0x7F, 125)]
        assert unmask_python(one[start + 4 :], one[start : start + 4]) == payload
        assert one[start : start + 4] != two[start : start + 4] or size == 0


@asynccontextmanager
async def upgraded(answer: bytes) -> AsyncIterator[ClientWebSocket]:
    """A client whose upgrade request is answered with `answer` (ACCEPT: the right key)."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive_some(4096)
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))  # fmt: skip
            await stream.send_all(answer.replace(b"ACCEPT", accept_key(key.decode()).encode()))
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        stream = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
        ws = ClientWebSocket(stream, max_message_bytes=100)
        try:
            with trio.fail_after(TIMEOUT_S):
                await ws.handshake("h", "/", [])
            yield ws
        finally:
            await stream.aclose()
            nursery.cancel_scope.cancel()


UPGRADE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


@pytest.mark.parametrize(
    "answer",
    [
        UPGRADE + b"Sec-WebSocket-Accept: d3JvbmcgYWNjZXB0IGtleSE=\r\n\r\n",
        UPGRADE + b"\r\n",  # no accept key
        UPGRADE + b"Sec-WebSocket-Accept: ACCEPT\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        UPGRADE + b"Sec-WebSocket-Accept: ACCEPT\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ACCEPT\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Accept: ACCEPT\r\n\r\n",
        UPGRADE + b"Sec-WebSocket-Accept : ACCEPT\r\n\r\n",  # whitespace before the colon
        b"HTTP/1.0 101 OK\r\n\r\n",
        b"HTTP/1.1 101 OK\r\n" + b"X: " + b"a" * (17 << 10),  # never ends, too large
    ],
)
async def test_bad_upgrade_answers_fail_the_handshake(answer: bytes) -> None:
    with pytest.RaisesGroup(WsHandshakeError, flatten_subgroups=True):
        async with upgraded(answer):
            raise AssertionError("the handshake passed")


async def test_frames_in_the_same_segment_as_the_upgrade_answer_are_kept() -> None:
    answer = UPGRADE + b"sec-websocket-accept:ACCEPT\r\nconnection: keep-alive, upgrade\r\n\r\n"
    async with upgraded(answer + frame(0x2, b"welcome")) as ws:
        with trio.fail_after(TIMEOUT_S):
            assert await ws.receive() == b"welcome"


async def read_big_client_frame(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bytes]:
    """(opcode, unmasked payload) of the next client frame, any length."""

    async def need(n: int) -> None:
        while len(buf) < n:
            data = await stream.receive_some(1 << 16)
            assert data, "the client closed the connection"
            buf.extend(data)

    await need(2)
    length, start = buf[1] & 0x7F, 2
    if length == 126:
        await need(4)
        length, start = struct.unpack_from("!H", buf, 2)[0], 4
    elif length == 127:
        await need(10)
        length, start = struct.unpack_from("!Q", buf, 2)[0], 10
    await need(start + 4 + length)
    payload = unmask_python(bytes(buf[start + 4 : start + 4 + length]), bytes(buf[start : start + 4]))
    opcode = buf[0] & 0x0F
    del buf[: start + 4 + length]
    return opcode, payload


async def test_a_frame_the_socket_cannot_take_at_once_goes_out_whole_and_alone() -> None:
    big = bytes(range(256)) * (32 << 10)  # 8 MiB: more than a loopback socket buffer holds
    got: list[tuple[int, bytes]] = []
    reading = trio.Event()

    async def server(stream: trio.SocketStream, request: bytes) -> None:
        await reading.wait()
        buf = bytearray()
        got.append(await read_big_client_frame(stream, buf))
        got.append(await read_big_client_frame(stream, buf))
        await stream.send_all(frame(0x2, b"done"))

    async with connected(server) as ws, trio.open_nursery() as nursery:
        with trio.fail_after(TIMEOUT_S):
            nursery.start_soon(partial(ws.send, big, then_waits=True))
            await trio.testing.wait_all_tasks_blocked()
            assert ws._send_lock.locked()  # the big send is parked on a full socket, holding it
            nursery.start_soon(ws.send, b"small")
            await trio.testing.wait_all_tasks_blocked()
            reading.set()
            assert await ws.receive() == b"done"
    assert got == [(0x2, big), (0x2, b"small")]


async def test_sending_on_a_closed_stream_is_ws_closed() -> None:
    async def server(stream: trio.SocketStream, request: bytes) -> None:
        await trio.sleep_forever()

    async with connected(server) as ws:
        await ws._stream.aclose()
        for then_waits in (True, False):
            with pytest.raises(WsClosed):
                await ws.send(b"x", then_waits=then_waits)
        with pytest.raises(trio.ClosedResourceError):
            await ws.receive()


# -- the answer waits' deadlines (node.client._types.Deadlines) --------------------------------


async def test_deadlines_settle_open_slots_in_time_and_leave_answered_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadlines = Deadlines()
    late, answered, early = Pending[int](), Pending[int](), Pending[int]()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        deadlines.add(start + 10, late)
        deadlines.add(start + 5, answered)
        deadlines.add(start + 1, early)  # earlier than the timer: it moves
        answered.settle(7)
        await early.done.wait()
        assert trio.current_time() - start == pytest.approx(1)
        await late.done.wait()
        assert trio.current_time() - start == pytest.approx(10)
        nursery.cancel_scope.cancel()
    for slot in (early, late):
        with pytest.raises(trio.TooSlowError):
            slot.outcome()
    assert answered.outcome() == 7
    assert len(deadlines) == 0


def test_deadlines_stay_bounded_when_answers_come_first() -> None:
    deadlines = Deadlines()
    for i in range(10_000):
        slot = Pending[int]()
        deadlines.add(3600.0 + i, slot)
        slot.settle(i)
    assert len(deadlines) <= 2048
    still_open = [Pending[int]() for _ in range(3000)]
    for slot in still_open:
        deadlines.add(7200.0, slot)
    assert 3000 <= len(deadlines) <= 2 * 3000 + 1024
