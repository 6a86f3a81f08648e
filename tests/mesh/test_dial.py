"""Links dialled on Trio (`node.mesh._dial`) against the mesh listener (`node.mesh._accept`), over
loopback, plain and TLS: both ends of the node's own HTTP/2 code."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
import trustme

from node.errors import Unavailable
from node.mesh._accept import ListenerLimits, MeshListener
from node.mesh._dial import open_link
from node.mesh._peer import PeerStream, client_ssl, server_ssl
from node.mesh._peer_model import Frames, Goodbye, Handoff, PeerMessage, Ping

Accept = Callable[[PeerStream], Awaitable[None]]
LIMIT_S = 10
LIMITS = ListenerLimits(
    window=8, queue_max=1000, max_message_bytes=4 << 20, max_connections=8, handshake_timeout_s=2.0,
    pre_auth_message_bytes=4 << 20,  # these tests run the transport alone, without a handshake
)  # fmt: skip


class Acceptor:
    """The accepting node's side: records what arrives; `echo` sends every message back (the
    window is larger than any burst of the tests, so `send_nowait` never refuses one)."""

    def __init__(self) -> None:
        self.received: list[PeerMessage] = []
        self.ended = trio.Event()
        self.behaviour: Accept = self.echo

    async def accept(self, peer: PeerStream) -> None:
        try:
            await self.behaviour(peer)
        finally:
            self.ended.set()

    async def echo(self, peer: PeerStream) -> None:
        while True:
            try:
                message = await peer.receive()
            except trio.EndOfChannel:
                return
            self.received.append(message)
            if isinstance(message, Goodbye):
                return
            peer.send_nowait(message)  # False once the dialler has half-closed: the link is over


async def serve(
    nursery: trio.Nursery, acceptor: Acceptor, tls: ssl.SSLContext | None = None,
    limits: ListenerLimits = LIMITS,
) -> tuple[MeshListener, int]:  # fmt: skip
    """A mesh listener on 127.0.0.1, port 0, handing links to `acceptor`."""
    listener = MeshListener(acceptor.accept, limits, tls)
    address = await nursery.start(listener.serve, "127.0.0.1", 0)
    return listener, int(address.rpartition(":")[2])


async def _serve(nursery: trio.Nursery, acceptor: Acceptor, tls: ssl.SSLContext | None = None) -> int:
    return (await serve(nursery, acceptor, tls))[1]


@pytest.fixture
async def acceptor(nursery: trio.Nursery) -> tuple[Acceptor, int]:
    node = Acceptor()
    return node, await _serve(nursery, node)


def _dial(
    port: int, tls: ssl.SSLContext | None = None, tls_server_name: str | None = None
) -> AbstractAsyncContextManager[PeerStream]:
    return open_link(
        "127.0.0.1",
        port,
        window=8,
        queue_max=1000,
        connect_timeout_s=5,
        tls=tls,
        tls_server_name=tls_server_name,
        pre_auth_message_bytes=4 << 20,
    )


async def test_messages_cross_both_ways_in_order_beyond_the_windows(acceptor: tuple[Acceptor, int]) -> None:
    node, port = acceptor
    sent = [Ping(i) for i in range(300)] + [Handoff(1, "d", (b"x" * 300_000, b"y" * 300_000))]
    with trio.fail_after(LIMIT_S):
        async with _dial(port) as peer:
            for message in sent:  # 8 in flight, the rest in the backlog
                assert peer.send_nowait(message)
            echoed = [await peer.receive() for _ in sent]
    assert echoed == sent
    assert node.received == sent


async def test_frames_queued_together_go_as_one_message(acceptor: tuple[Acceptor, int]) -> None:
    node, port = acceptor
    frames = [bytes([i]) * 60 for i in range(6)]
    with trio.fail_after(LIMIT_S):
        async with _dial(port) as peer:
            for i, frame in enumerate(frames):
                peer.send_nowait(Frames((frame,), bytes((i + 1,))))
            merged = await peer.receive()
    assert merged == Frames(tuple(frames), bytes(range(1, 7)))
    assert node.received == [merged]


async def test_handler_mode_delivers_inline(acceptor: tuple[Acceptor, int]) -> None:
    _, port = acceptor
    got: list[PeerMessage] = []
    done = trio.Event()

    def handler(message: PeerMessage) -> bool:
        got.append(message)
        if len(got) == 50:
            done.set()
        return True

    with trio.fail_after(LIMIT_S):
        async with _dial(port) as peer:
            peer.set_handler(handler)
            for i in range(50):
                peer.send_nowait(Ping(i))
            await done.wait()
    assert got == [Ping(i) for i in range(50)]


async def test_close_writes_what_is_queued_then_ends_cleanly(acceptor: tuple[Acceptor, int]) -> None:
    node, port = acceptor
    with trio.fail_after(LIMIT_S):
        async with _dial(port) as peer:
            peer.send_nowait(Ping(1))
            peer.send_nowait(Goodbye("bye"))
            peer.close()
            await peer.closed.wait()
        await node.ended.wait()
    assert peer.error is None
    assert node.received == [Ping(1), Goodbye("bye")]


async def test_the_acceptor_ending_ends_the_link(acceptor: tuple[Acceptor, int]) -> None:
    node, port = acceptor

    async def refuse(peer: PeerStream) -> None:
        await peer.receive()
        await peer.send(Goodbye("not you"))

    node.behaviour = refuse
    with trio.fail_after(LIMIT_S):
        async with _dial(port) as peer:
            peer.send_nowait(Ping(1))
            assert await peer.receive() == Goodbye("not you")
            with pytest.raises(trio.EndOfChannel):
                await peer.receive()


async def test_nobody_listening_is_unavailable() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with trio.fail_after(LIMIT_S):
            async with _dial(port) as peer:
                with pytest.raises(Unavailable):
                    await peer.receive()


async def test_tls_with_the_cluster_ca_and_not_without(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "node.pem", tmp_path / "node.key", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(cert_path), append=True)
    ca.cert_pem.write_to_path(str(ca_path))
    node = Acceptor()
    port = await _serve(nursery, node, server_ssl(str(cert_path), str(key_path)))
    with trio.fail_after(LIMIT_S):
        async with _dial(port, tls=client_ssl(str(ca_path)), tls_server_name="localhost") as peer:
            big = Handoff(2, "d", (b"z" * 200_000,))
            peer.send_nowait(Ping(5))
            peer.send_nowait(big)
            assert [await peer.receive(), await peer.receive()] == [Ping(5), big]
        stranger = tmp_path / "other.pem"
        trustme.CA().cert_pem.write_to_path(str(stranger))
        async with _dial(port, tls=client_ssl(str(stranger)), tls_server_name="localhost") as peer:
            with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await peer.receive()
