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

from node.client._ws import ClientWebSocket, WsClosed, WsRejected
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
