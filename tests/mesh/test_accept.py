"""The mesh listener (`node.mesh._accept`) with real sockets on loopback: other gRPC clients dial it
(grpclib, and the official grpcio client), the challenge-response refuses a wrong cluster secret,
and untrusted input (garbage, oversized headers and messages, a trickled preface, too many
connections) is closed within its bounds."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpclib.client
import grpclib.exceptions
import pytest
import trio
import trustme
from grpclib.const import Cardinality, Status

from node.mesh import _auth as auth
from node.mesh._accept import ListenerLimits
from node.mesh._dial import open_link
from node.mesh._links import Identity, PeerInfo, Refused, accept_handshake, dial_handshake
from node.mesh._peer import LINK, PeerStream, server_ssl
from node.mesh._peer_codec import decode, encode
from node.mesh._peer_model import Handoff, PeerMessage, Ping
from tests.mesh.test_dial import LIMIT_S, Acceptor, serve

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CLIENT_S = 8.0  # bound of every foreign client's work (its own clock)


def in_asyncio(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a grpclib client on its own asyncio loop in a worker thread, bounded in time."""

    async def bounded() -> Any:
        async with asyncio.timeout(CLIENT_S):
            return await make()

    return trio.to_thread.run_sync(asyncio.run, bounded())


async def grpclib_exchange(
    port: int, messages: list[Any], *, path: str = LINK, tls: ssl.SSLContext | None = None,
    metadata: dict[str, str] | None = None,
) -> list[PeerMessage]:  # fmt: skip
    """Send `messages` on one grpclib stream, receive as many back, end the stream (which ends the
    link) and collect what else comes until the trailers."""

    async def client() -> list[PeerMessage]:
        channel = grpclib.client.Channel("127.0.0.1", port, ssl=tls)
        try:
            async with channel.request(
                path, Cardinality.STREAM_STREAM, PeerMessage, PeerMessage, metadata=metadata
            ) as stream:
                for message in messages:
                    await stream.send_message(message)
                received = [await stream.recv_message() for _ in messages]
                await stream.end()
                return [m for m in received if m is not None] + [m async for m in stream]
        finally:
            transport = getattr(channel._protocol and channel._protocol.connection, "_transport", None)
            channel.close()
            sock = transport.get_extra_info("socket") if transport is not None else None
            while sock is not None and sock.fileno() != -1:
                await asyncio.sleep(0.005)  # the transport closes in later passes (TLS: close_notify)
            await asyncio.sleep(0)  # (a connection lost before: its socket closes in this pass)

    result: list[PeerMessage] = await in_asyncio(client)
    return result


class _Raw(PeerMessage):
    """Bytes grpclib sends as they are (a malformed message)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "node.pem", tmp_path / "node.key"
    cert.private_key_pem.write_to_path(str(key_path))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(cert_path), append=True)
    return str(cert_path), str(key_path)


# ---------------------------------------------------------------------- other clients


@pytest.mark.parametrize("use_tls", [False, True])
async def test_a_grpclib_client_links_and_gets_its_messages_back(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path, use_tls: bool
) -> None:
    node = Acceptor()
    tls = server_ssl(*tls_files(ca, tmp_path)) if use_tls else None
    _, port = await serve(nursery, node, tls)
    client_tls = None
    if use_tls:
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        client_tls.set_alpn_protocols(["h2"])
    sent: list[Any] = [Ping(i) for i in range(40)] + [Handoff(3, "d", (b"q" * 300_000,))]
    with trio.fail_after(LIMIT_S):
        echoed = await grpclib_exchange(port, sent, tls=client_tls)
        await node.ended.wait()
    assert echoed == sent
    assert node.received == sent


async def test_the_official_grpcio_client_links(nursery: trio.Nursery) -> None:
    node = Acceptor()
    _, port = await serve(nursery, node)
    sent = [Ping(i) for i in range(60)] + [Handoff(1, "d", (b"z" * 200_000,))]

    echoed_all = threading.Event()

    def requests() -> Iterator[PeerMessage]:
        yield from sent
        echoed_all.wait(CLIENT_S)  # then the iterator ends: grpcio half-closes, and the link ends

    def client() -> list[PeerMessage]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            link = channel.stream_stream(LINK, request_serializer=encode, response_deserializer=decode)
            call = link(requests(), timeout=CLIENT_S)
            received = [next(call) for _ in sent]
            echoed_all.set()
            return [*received, *call]

    with trio.fail_after(LIMIT_S):
        echoed = await trio.to_thread.run_sync(client)
    assert echoed == sent


async def test_another_method_is_unimplemented(nursery: trio.Nursery) -> None:
    node = Acceptor()
    listener, port = await serve(nursery, node)
    with trio.fail_after(LIMIT_S), pytest.raises(grpclib.exceptions.GRPCError) as error:
        await grpclib_exchange(port, [Ping(1)], path="/asgard.v1.Mesh/Other")
    assert error.value.status is Status.UNIMPLEMENTED
    assert node.received == [] and listener.stats.accepted == 0


# ---------------------------------------------------------------------- the cluster secret


async def test_a_wrong_cluster_secret_is_refused_on_both_sides(nursery: trio.Nursery) -> None:
    acceptor_id = Identity("node-a", "home", "1", "127.0.0.1:1", "a")
    dialer_id = Identity("node-b", "home", "1", "127.0.0.1:2", "b")
    results: list[PeerInfo | Refused] = []

    async def authenticate(peer: PeerStream) -> None:
        try:
            results.append(await accept_handshake(peer, acceptor_id, auth.link_key("s" * 20, "home"), ()))
        except Refused as exc:
            results.append(exc)

    node = Acceptor()
    node.behaviour = authenticate
    _, port = await serve(nursery, node)
    for secret in ("s" * 20, "x" * 20):
        node.ended = trio.Event()
        with trio.fail_after(LIMIT_S):
            async with open_link("127.0.0.1", port, window=8, queue_max=100, connect_timeout_s=5) as peer:
                try:
                    results.append(await dial_handshake(peer, dialer_id, auth.link_key(secret, "home")))
                except Refused as exc:
                    results.append(exc)
            await node.ended.wait()
    accepted, dialled, refused_here, refused_there = results
    assert accepted == PeerInfo("node-b", "1", "127.0.0.1:2", "b")
    assert dialled == PeerInfo("node-a", "1", "127.0.0.1:1", "a")
    assert isinstance(refused_here, Refused) and refused_here.security  # the dialler saw a wrong proof
    assert isinstance(refused_there, Refused) and refused_there.security  # no proof came back
    assert refused_there.peer == "node-b"


async def test_large_messages_cross_only_after_the_challenge_response(nursery: trio.Nursery) -> None:
    key = auth.link_key("s" * 20, "home")
    acceptor_id = Identity("node-a", "home", "1", "127.0.0.1:1", "a")
    dialer_id = Identity("node-b", "home", "1", "127.0.0.1:2", "b")
    big = Handoff(1, "d", (b"m" * 1_000_000,))

    async def authenticate_then_echo(peer: PeerStream) -> None:
        await accept_handshake(peer, acceptor_id, key, ())
        await node.echo(peer)

    node = Acceptor()
    node.behaviour = authenticate_then_echo
    limits = ListenerLimits(8, 100, 4 << 20, max_connections=8, handshake_timeout_s=2.0)
    _, port = await serve(nursery, node, limits=limits)
    with trio.fail_after(LIMIT_S):
        async with open_link("127.0.0.1", port, window=8, queue_max=100, connect_timeout_s=5) as peer:
            await dial_handshake(peer, dialer_id, key)
            assert peer.send_nowait(big)
            assert await peer.receive() == big  # both ways: each side lifted its limit in time
    assert node.received == [big]
    # The same message before any handshake ends the link (the pre-authentication limit, 64 KiB).
    node.behaviour = node.echo
    with trio.fail_after(LIMIT_S), pytest.raises(grpclib.exceptions.GRPCError) as error:
        await grpclib_exchange(port, [big])
    assert error.value.status is Status.RESOURCE_EXHAUSTED
    assert node.received == [big]


# ---------------------------------------------------------------------- untrusted input


async def read_until_closed(sock: trio.socket.SocketType) -> bytes:
    """Everything the listener sends until it closes the connection."""
    data = bytearray()
    while True:
        try:
            chunk = await sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


async def connect(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    return sock


async def test_garbage_is_closed_at_once(nursery: trio.Nursery) -> None:
    node = Acceptor()
    listener, port = await serve(nursery, node)
    with trio.fail_after(1.0):
        with await connect(port) as sock:
            await sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until_closed(sock)
        await listener.wait_idle()
    assert listener.stats.failed == 1 and listener.stats.accepted == 0


@pytest.mark.parametrize("trickle", [PREFACE, PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"])
async def test_a_slow_client_is_closed_at_the_handshake_deadline(
    nursery: trio.Nursery, trickle: bytes
) -> None:
    """Slowloris: the preface a byte at a time, or a preface and SETTINGS but never a request."""
    node = Acceptor()
    limits = ListenerLimits(8, 100, 4 << 20, max_connections=8, handshake_timeout_s=0.5)
    listener, port = await serve(nursery, node, limits=limits)
    start = trio.current_time()
    with await connect(port) as sock:
        async with trio.open_nursery() as inner:

            async def trickle_bytes() -> None:
                with contextlib.suppress(OSError):  # the listener closes the connection meanwhile
                    for byte in trickle:
                        await sock.send(bytes([byte]))
                        await trio.sleep(0.05)

            inner.start_soon(trickle_bytes)
            with trio.fail_after(3.0):
                await read_until_closed(sock)
            inner.cancel_scope.cancel()
    assert 0.5 <= trio.current_time() - start < 2.0
    with trio.fail_after(LIMIT_S):
        await listener.wait_idle()
    assert listener.stats.failed == 1 and node.received == []


async def test_an_oversized_message_ends_the_link(nursery: trio.Nursery) -> None:
    node = Acceptor()
    limits = ListenerLimits(8, 100, max_message_bytes=1024, max_connections=8, handshake_timeout_s=2.0)
    _, port = await serve(nursery, node, limits=limits)
    with trio.fail_after(LIMIT_S), pytest.raises(grpclib.exceptions.GRPCError) as error:
        await grpclib_exchange(port, [Handoff(1, "d", (b"x" * 2000,))])
    assert error.value.status is Status.RESOURCE_EXHAUSTED
    assert node.received == []


async def test_a_malformed_message_ends_the_link(nursery: trio.Nursery) -> None:
    node = Acceptor()
    _, port = await serve(nursery, node)
    with trio.fail_after(LIMIT_S), pytest.raises(grpclib.exceptions.GRPCError) as error:
        await grpclib_exchange(port, [_Raw(b"\xff\xff\xff")])
    assert error.value.status is Status.INTERNAL
    assert node.received == []


async def test_oversized_headers_end_the_connection(nursery: trio.Nursery) -> None:
    node = Acceptor()
    listener, port = await serve(nursery, node)
    refused = (grpclib.exceptions.GRPCError, grpclib.exceptions.StreamTerminatedError, ConnectionError)
    with trio.fail_after(LIMIT_S), pytest.raises(refused):
        await grpclib_exchange(port, [Ping(1)], metadata={"x-padding": "p" * 20_000})
    with trio.fail_after(LIMIT_S):
        await listener.wait_idle()
    assert node.received == [] and listener.stats.accepted == 0 and listener.stats.failed == 1


async def test_connections_beyond_the_limit_are_closed(nursery: trio.Nursery) -> None:
    node = Acceptor()
    limits = ListenerLimits(8, 100, 4 << 20, max_connections=2, handshake_timeout_s=5.0)
    listener, port = await serve(nursery, node, limits=limits)
    with trio.fail_after(LIMIT_S):
        first, second, third = [await connect(port) for _ in range(3)]
        with first, second, third:
            await read_until_closed(third)  # the first two are held (until their deadline)
            assert listener.stats.rejected == 1 and listener.stats.open == 2
