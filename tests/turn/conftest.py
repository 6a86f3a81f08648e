"""Fixtures for the TURN tests: the service in-process on loopback, a small TURN client built on
`wire.stun`, an in-process UDP echo peer and `turnutils_peer`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from node.turn import TurnAddresses, TurnService, TurnSettings
from node.turn import service as service_module
from wire.stun import (
    Attr,
    Attribute,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    StreamDecoder,
    StunFrame,
    decode_channel_data_untrusted,
    decode_error_code_untrusted,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_channel_data,
    encode_channel_number,
    encode_message,
    encode_password_algorithm,
    encode_requested_transport,
    encode_u32,
    encode_xor_address,
    long_term_key,
    userhash,
)

REALM = "asgard.test"
USER, PASSWORD = "test", "secret"
REST_SECRET = "s3cr3t-rest"
TIMEOUT_S = 5.0


def base_settings(**overrides: Any) -> TurnSettings:
    """Loopback-only settings used by the tests."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "realm": REALM,
        "relay_ipv4": "127.0.0.1",
        "users": {USER: PASSWORD},
        "rest_secrets": [REST_SECRET],
        "allow_loopback_peers": True,
        "udp_buffer_bytes": 1 << 20,
        "relay_buffer_bytes": 256 << 10,
    }
    values.update(overrides)
    return TurnSettings(**values)


@dataclass
class RunningTurn:
    """A service started in the test's nursery."""

    service: TurnService
    addresses: TurnAddresses

    @property
    def udp(self) -> tuple[str, int]:
        return self.addresses.udp[0]

    @property
    def tcp(self) -> tuple[str, int]:
        return self.addresses.tcp[0]


async def start_turn(nursery: trio.Nursery, settings: TurnSettings | None = None, **kw: Any) -> RunningTurn:
    """Start a TurnService on loopback port 0 and wait until it listens."""
    service = TurnService(settings or base_settings(), **kw)
    with trio.fail_after(TIMEOUT_S):
        addresses = await nursery.start(service.serve)
    return RunningTurn(service, addresses)


@pytest.fixture
async def turn(nursery: trio.Nursery) -> RunningTurn:
    return await start_turn(nursery)


class TurnError(Exception):
    def __init__(self, code: int, reason: str, response: Message) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.response = response


@dataclass
class TurnClient:
    """A minimal TURN client (UDP or TCP) with the RFC 8489 long-term credential dance."""

    server: tuple[str, int]
    username: str = USER
    password: str = PASSWORD
    transport: str = "udp"
    algorithm: int | None = None  # None: legacy MD5 without PASSWORD-ALGORITHM(S)
    use_userhash: bool = False
    realm: bytes | None = None
    nonce: bytes | None = None
    offered: bytes | None = None
    sock: Any = None
    stream: Any = None
    decoder: StreamDecoder = field(default_factory=StreamDecoder)
    inbox: list[bytes] = field(default_factory=list)

    async def open(self) -> TurnClient:
        if self.transport == "udp":
            self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await self.sock.bind(("127.0.0.1", 0))
            await self.sock.connect(self.server)
        else:
            self.stream = await trio.open_tcp_stream(*self.server)
        return self

    async def aclose(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.stream is not None:
            await self.stream.aclose()

    @property
    def local(self) -> tuple[str, int]:
        sock = self.sock if self.sock is not None else self.stream.socket
        host, port = sock.getsockname()[:2]
        return host, port

    async def send_raw(self, data: bytes) -> None:
        if self.sock is not None:
            await self.sock.send(data)
        else:
            await self.stream.send_all(data)

    async def _read(self) -> list[Any]:
        if self.sock is not None:
            return [await self.sock.recv(70000)]
        data = await self.stream.receive_some(70000)
        if not data:
            raise EOFError("server closed the connection")
        self.decoder.receive_data(data)
        frames = []
        while (frame := self.decoder.next_frame()) is not None:
            frames.append(
                frame.data if isinstance(frame, StunFrame) else encode_channel_data(frame.channel, frame.data)
            )
        return frames

    async def next_matching(self, predicate: Callable[[bytes], bool]) -> bytes:
        """The first received datagram or frame that satisfies `predicate` (others stay queued)."""
        while True:
            for index, raw in enumerate(self.inbox):
                if predicate(raw):
                    return self.inbox.pop(index)
            self.inbox.extend(await self._read())

    def key(self) -> bytes:
        assert self.realm is not None
        return long_term_key(
            self.username, self.realm.decode(), self.password, self.algorithm or PasswordAlgorithm.MD5
        )

    def build(
        self, method: int, attrs: list[Attribute], *, auth: bool = True, tid: bytes | None = None
    ) -> bytes:
        tid = tid or os.urandom(12)
        body = list(attrs)
        if auth and self.realm is not None:
            if self.use_userhash:
                body.append(Attribute(Attr.USERHASH, userhash(self.username, self.realm.decode())))
            else:
                body.append(Attribute(Attr.USERNAME, self.username.encode()))
            body += [Attribute(Attr.REALM, self.realm), Attribute(Attr.NONCE, self.nonce or b"")]
            if self.algorithm is not None:
                body.append(Attribute(Attr.PASSWORD_ALGORITHMS, self.offered or b""))
                body.append(Attribute(Attr.PASSWORD_ALGORITHM, encode_password_algorithm(self.algorithm)))
        message = Message(method, MessageClass.REQUEST, tid, tuple(body))
        if not (auth and self.realm is not None):
            return encode_message(message, fingerprint=True)
        kind = "sha256" if self.algorithm == PasswordAlgorithm.SHA256 else "sha1"
        return encode_message(message, integrity_key=self.key(), integrity=kind, fingerprint=True)  # type: ignore[arg-type]

    async def transact(self, data: bytes) -> Message:
        tid = data[8:20]
        with trio.fail_after(TIMEOUT_S):
            await self.send_raw(data)
            raw = await self.next_matching(lambda r: r[0] < 0x40 and r[8:20] == tid)
        return decode_message_untrusted(raw)

    async def request(
        self, method: int, attrs: list[Attribute] | None = None, *, retry: bool = True
    ) -> Message:
        """Send a request; on 401/438 adopt REALM/NONCE and retry; raise TurnError on errors."""
        attrs = attrs or []
        for _ in range(3):
            response = await self.transact(self.build(method, attrs))
            if response.cls == MessageClass.SUCCESS:
                return response
            code, reason = decode_error_code_untrusted(response.get(Attr.ERROR_CODE) or b"\0\0\0\0")
            if retry and code in (401, 438) and response.get(Attr.NONCE) is not None:
                first = self.realm is None
                self.realm = response.get(Attr.REALM) or self.realm
                self.nonce = response.get(Attr.NONCE)
                self.offered = response.get(Attr.PASSWORD_ALGORITHMS)
                if first or code == 438:
                    continue
            raise TurnError(code, reason, response)
        raise TurnError(401, "authentication failed", response)

    async def allocate(
        self, extra: list[Attribute] | None = None, lifetime: int | None = None
    ) -> tuple[str, int]:
        attrs = [Attribute(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))]
        if lifetime is not None:
            attrs.append(Attribute(Attr.LIFETIME, encode_u32(lifetime)))
        response = await self.request(Method.ALLOCATE, attrs + (extra or []))
        value = response.get(Attr.XOR_RELAYED_ADDRESS)
        assert value is not None
        return decode_xor_address_untrusted(value, response.transaction_id)

    async def refresh(self, lifetime: int | None = None) -> Message:
        attrs = [] if lifetime is None else [Attribute(Attr.LIFETIME, encode_u32(lifetime))]
        return await self.request(Method.REFRESH, attrs)

    async def create_permission(self, *peers: tuple[str, int]) -> Message:
        tid = os.urandom(12)
        attrs = [Attribute(Attr.XOR_PEER_ADDRESS, encode_xor_address(h, p, tid)) for h, p in peers]
        return await self._request_tid(Method.CREATE_PERMISSION, attrs, tid)

    async def channel_bind(self, channel: int, peer: tuple[str, int]) -> Message:
        tid = os.urandom(12)
        attrs = [
            Attribute(Attr.CHANNEL_NUMBER, encode_channel_number(channel)),
            Attribute(Attr.XOR_PEER_ADDRESS, encode_xor_address(peer[0], peer[1], tid)),
        ]
        return await self._request_tid(Method.CHANNEL_BIND, attrs, tid)

    async def _request_tid(self, method: int, attrs: list[Attribute], tid: bytes) -> Message:
        # XOR-PEER-ADDRESS depends on the transaction id only for IPv6; keep one id per try.
        for _ in range(3):
            response = await self.transact(self.build(method, attrs, tid=tid))
            if response.cls == MessageClass.SUCCESS:
                return response
            code, reason = decode_error_code_untrusted(response.get(Attr.ERROR_CODE) or b"\0\0\0\0")
            if code == 438 and response.get(Attr.NONCE) is not None:
                self.nonce = response.get(Attr.NONCE)
                continue
            raise TurnError(code, reason, response)
        raise TurnError(438, "stale nonce", response)

    async def send_indication(self, peer: tuple[str, int], data: bytes) -> None:
        tid = os.urandom(12)
        attrs = (
            Attribute(Attr.XOR_PEER_ADDRESS, encode_xor_address(peer[0], peer[1], tid)),
            Attribute(Attr.DATA, data),
        )
        await self.send_raw(encode_message(Message(Method.SEND, MessageClass.INDICATION, tid, attrs)))

    async def send_channel(self, channel: int, data: bytes) -> None:
        await self.send_raw(encode_channel_data(channel, data, pad=self.transport == "tcp"))

    async def receive_data(self) -> tuple[str, Any, bytes]:
        """Next relayed payload: ("channel", number, data) or ("data", peer, data) or ("icmp", peer, value)."""
        while True:
            raw = await self.next_matching(lambda r: r[0] >= 0x40 or r[:2] == b"\x00\x17")
            if 0x40 <= raw[0] <= 0x7F:
                channel, data = decode_channel_data_untrusted(raw, max_channel=0x7FFF)
                return "channel", channel, data
            message = decode_message_untrusted(raw)
            if message.method == Method.DATA and message.cls == MessageClass.INDICATION:
                peer_value = message.get(Attr.XOR_PEER_ADDRESS)
                assert peer_value is not None
                peer = decode_xor_address_untrusted(peer_value, message.transaction_id)
                icmp = message.get(Attr.ICMP)
                if icmp is not None:
                    return "icmp", peer, icmp
                return "data", peer, message.get(Attr.DATA) or b""


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[..., Any]]:
    clients: list[TurnClient] = []

    async def make(server: tuple[str, int], **kw: Any) -> TurnClient:
        client = await TurnClient(server, **kw).open()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@dataclass
class EchoPeer:
    """An in-process UDP peer that echoes and records what it received."""

    address: tuple[str, int]
    received: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)


async def _echo(sock: Any, peer: EchoPeer, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    while True:
        data, source = await sock.recvfrom(70000)
        peer.received.append((data, source[:2]))
        await sock.sendto(data, source)


@pytest.fixture
async def echo_peer() -> AsyncIterator[EchoPeer]:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        peer = EchoPeer(sock.getsockname())
        async with trio.open_nursery() as nursery:
            await nursery.start(_echo, sock, peer)
            yield peer
            nursery.cancel_scope.cancel()


class RecordingSocket(socket.socket):
    """A real UDP socket that records every datagram it is asked to send."""

    sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: Any, *args: Any) -> int:  # type: ignore[override]
        RecordingSocket.sent.append((bytes(data), args[-1]))
        return super().sendto(data, *args)


@pytest.fixture
def recorded_relay_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, Any]]:
    """Make every relay socket (not the listeners) a RecordingSocket; returns the list of sends."""
    original = service_module.bind_in_range
    sent: list[tuple[bytes, Any]] = []
    RecordingSocket.sent = sent

    def recording(*args: Any, **kwargs: Any) -> Any:
        bound = original(*args, **kwargs)
        if bound is None:
            return None
        return tuple(None if s is None else RecordingSocket(s.family, s.type, 0, s.detach()) for s in bound)

    monkeypatch.setattr(service_module, "bind_in_range", recording)
    return sent


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def turnutils_peer(require_program: Callable[[str], str]) -> Iterator[tuple[str, int]]:
    """coturn's UDP echo peer on loopback; stopped (process group) afterwards."""
    path = require_program("turnutils_peer")
    port = free_udp_port()
    proc = subprocess.Popen(
        [path, "-L", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_echo(("127.0.0.1", port))
        yield "127.0.0.1", port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _wait_echo(address: tuple[str, int]) -> None:
    """Poll the echo peer until it answers (bounded); a readiness check, not a sleep."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        for _ in range(100):
            sock.sendto(b"ping", address)
            try:
                if sock.recv(64) == b"ping":
                    return
            except OSError:
                continue
    raise RuntimeError("turnutils_peer did not start")
