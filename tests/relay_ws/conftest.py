"""Fixtures for the WebSocket engine: a server on 127.0.0.1:0 and a raw client speaking bytes."""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from node.relay._wsserve import WsEngine, WsHandler, serve_ws
from node.relay._wssettings import WsSettings

StartServer = Callable[..., Awaitable[tuple[int, WsEngine]]]


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> StartServer:
    """Start `serve_ws(handler)` in the test's nursery; return (port, engine)."""

    async def start(handler: WsHandler, **settings: object) -> tuple[int, WsEngine]:
        engine = WsEngine(WsSettings.model_validate(settings))
        _host, port = await nursery.start(serve_ws, handler, engine)
        return port, engine

    return start


def mask_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame (RFC 6455 §5.2), built without the code under test."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A byte-level client on a non-blocking socket driven by Trio (works with autojump_clock)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        return cls(sock)

    @classmethod
    def pair(cls) -> tuple[RawClient, socket.socket]:
        """A connected socket pair: (client end, server end), both non-blocking."""
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        return cls(a), b

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await trio.lowlevel.wait_writable(self.sock)
            view = view[self.sock.send(view) :]

    async def _more(self) -> bool:
        await trio.lowlevel.wait_readable(self.sock)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buf += chunk
        return bool(chunk)

    async def handshake(self, path: str = "/echo", extra: str = "") -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        await self.send(
            (
                f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        return await self.read_http()

    async def read_http(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            if not await self._more():
                break
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        return head

    async def read_frame(self) -> tuple[int, bytes] | None:
        """Return (opcode, payload) of the next server frame, or None at EOF."""
        while True:
            if len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                start = 2 + {126: 2, 127: 8}.get(n, 0)
                if len(self.buf) >= start:
                    if n == 126:
                        n = struct.unpack_from("!H", self.buf, 2)[0]
                    elif n == 127:
                        n = struct.unpack_from("!Q", self.buf, 2)[0]
                    if len(self.buf) >= start + n:
                        assert not self.buf[1] & 0x80, "server frames are never masked"
                        opcode = self.buf[0] & 0x0F
                        payload = bytes(self.buf[start : start + n])
                        del self.buf[: start + n]
                        return opcode, payload
            if not await self._more():
                return None

    async def read_close(self) -> int | None:
        """Skip to the server's close frame and return its code (None at EOF without one)."""
        while (frame := await self.read_frame()) is not None:
            if frame[0] == 0x8:
                return struct.unpack("!H", frame[1][:2])[0] if frame[1] else 1005
        return None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def raw_clients() -> AsyncIterator[list[RawClient]]:
    """A list the test appends RawClients to; all are closed at the end."""
    clients: list[RawClient] = []
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def raw_client_cls() -> type[RawClient]:
    return RawClient


@pytest.fixture
def frame() -> Callable[..., bytes]:
    return mask_frame
