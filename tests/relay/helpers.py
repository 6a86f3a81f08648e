"""Helpers of the relay tests: a live node with devices and clients, and a byte-level WebSocket client."""

from __future__ import annotations

import base64
import os
import socket
import struct
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from node.app import NodeHandle
from node.auth import SYSTEM, Role
from node.client import ClientSettings, DeviceClient
from node.relay.service import RelayService
from wire.device import (
    FrameView,
    decode_control_untrusted,
    decode_frame_untrusted,
    encode_control,
    encode_frame,
)

TIMEOUT_S = 10.0
MAX = 1 << 28


@dataclass(frozen=True)
class Device:
    """A device id, its network and a token for it."""

    device_id: uuid.UUID
    network_id: uuid.UUID
    token: str

    @property
    def raw_id(self) -> bytes:
        return self.device_id.bytes


@dataclass
class RelayEnv:
    """A running node, a network, and what the test opened on it."""

    handle: NodeHandle
    network_id: uuid.UUID
    nursery: trio.Nursery
    clients: list[DeviceClient] = field(default_factory=list)
    raws: list[RawWs] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.handle.addresses["relay"]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    @property
    def relay(self) -> RelayService:
        relay = self.handle.extra["relay"]
        assert isinstance(relay, RelayService)
        return relay

    async def network(self, name: str = "other") -> uuid.UUID:
        net = await self.handle.registry.create_network(SYSTEM, name)
        return uuid.UUID(net.network_id)

    async def device(
        self,
        network: uuid.UUID | None = None,
        *,
        role: Role = Role.DEVICE,
        networks: tuple[uuid.UUID, ...] = (),
    ) -> Device:
        """A new device id and a token for it (a device token bound to it, or a service token)."""
        device_id = uuid.uuid4()
        net = network or self.network_id
        scope = [str(n) for n in (networks or (net,))]
        secret, _row = await self.handle.tokens.create(
            name="test device",
            role=role,
            device_id=str(device_id) if role is Role.DEVICE else None,
            networks=scope if role is Role.DEVICE or networks else (),
        )
        return Device(device_id, net, secret)

    async def client(self, dev: Device, **options: Any) -> DeviceClient:
        """A connected, registered client running in the node's nursery; closed after the test."""
        options.setdefault("reconnect", False)
        client = DeviceClient(
            self.url,
            token=dev.token,
            device_id=dev.device_id,
            network_id=dev.network_id,
            settings=ClientSettings(**options),
        )
        with trio.fail_after(TIMEOUT_S):
            await self.nursery.start(client.run)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        for raw in self.raws:
            raw.close()
        self.handle.stop()

    async def raw(self, *, token: str | None = None, path: str | None = None, extra: str = "") -> RawWs:
        """A byte-level client after the upgrade (check `.status`)."""
        ws = await RawWs.connect(self.port)
        self.raws.append(ws)
        headers = extra + (f"Authorization: Bearer {token}\r\n" if token else "")
        await ws.handshake(path or self.url.split(str(self.port), 1)[1], headers)
        return ws


class RawWs:
    """A byte-level WebSocket client on a non-blocking socket (works under autojump_clock)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.status = 0
        self.head = b""

    @classmethod
    async def connect(cls, port: int) -> RawWs:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        return cls(sock)

    async def handshake(self, path: str, headers: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        await self.send_raw(
            (
                f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buf:
            if not await self._more():
                break
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        self.head = head
        self.status = int(head.split(b" ", 2)[1]) if head else 0

    async def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await trio.lowlevel.wait_writable(self.sock)
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                continue

    async def send(self, payload: bytes, *, opcode: int = 0x2) -> None:
        """One masked client frame (RFC 6455 §5.2)."""
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = os.urandom(4)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(
            n, "big"
        )
        await self.send_raw(head + key + masked)

    async def _more(self) -> bool:
        await trio.lowlevel.wait_readable(self.sock)
        try:
            chunk = self.sock.recv(1 << 20)
        except (ConnectionResetError, BlockingIOError):
            chunk = b""
        self.buf += chunk
        return bool(chunk)

    async def read(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next server frame, None at EOF."""
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
                        opcode, payload = self.buf[0] & 0x0F, bytes(self.buf[start : start + n])
                        del self.buf[: start + n]
                        return opcode, payload
            if not await self._more():
                return None

    async def frame(self) -> FrameView:
        """The next device frame (binary message), skipping pings."""
        while True:
            got = await self.read()
            assert got is not None, "connection closed"
            opcode, payload = got
            if opcode == 0x2:
                return decode_frame_untrusted(payload, max_payload=MAX)
            assert opcode in (0x9, 0xA), f"unexpected opcode {opcode} {payload!r}"

    async def control(self) -> Any:
        return decode_control_untrusted(await self.frame())

    async def close_code(self) -> int | None:
        """Skip to the server's close frame; its code (None at EOF without one)."""
        while (got := await self.read()) is not None:
            if got[0] == 0x8:
                return struct.unpack("!H", got[1][:2])[0] if got[1] else 1005
        return None

    def close(self) -> None:
        self.sock.close()


def frame(
    ftype: int, source: uuid.UUID | bytes, destination: uuid.UUID | bytes = bytes(16), **kw: Any
) -> bytes:
    kw.setdefault("message_id", int.from_bytes(os.urandom(4)))
    return encode_frame(ftype, source=source, destination=destination, **kw)


def control(message: Any, **kw: Any) -> bytes:
    kw.setdefault("message_id", int.from_bytes(os.urandom(4)))
    return encode_control(message, **kw)


@asynccontextmanager
async def deadline(seconds: float = TIMEOUT_S) -> AsyncIterator[None]:
    with trio.fail_after(seconds):
        yield
