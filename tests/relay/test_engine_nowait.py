"""The engine's non-waiting write and its kept tail, and the outbox's inline flush (FlushHub).

A WsConnection on one end of a socket pair with small kernel buffers; the other end reads raw
bytes and parses server frames, so a torn or interleaved frame would show.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from node.relay._wsconn import WsConnection
from node.relay._wsserve import WsEngine
from node.relay._wssettings import WsSettings
from node.router import FlushHub, Outbox
from wire.ws import HandshakeRequest

REQUEST = HandshakeRequest(target="/", path="/", query="", headers=(), key="k", subprotocols=())


@pytest.fixture
async def pair() -> AsyncIterator[tuple[WsConnection, socket.socket]]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    engine = WsEngine(WsSettings(write_timeout_s=5.0))
    try:
        yield WsConnection(a, engine, REQUEST), b
    finally:
        a.close()
        b.close()


async def read_messages(sock: socket.socket, count: int) -> list[bytes]:
    """Read `count` unmasked binary frames from the raw stream."""
    buf = bytearray()
    out: list[bytes] = []
    while len(out) < count:
        await trio.lowlevel.wait_readable(sock)
        buf += sock.recv(1 << 16)
        while len(buf) >= 2:
            assert buf[0] == 0x82, f"not a whole binary frame: {bytes(buf[:4])!r}"
            n = buf[1] & 0x7F
            start = 2 + {126: 2, 127: 8}.get(n, 0)
            if len(buf) < start:
                break
            if n == 126:
                n = struct.unpack_from("!H", buf, 2)[0]
            elif n == 127:
                n = struct.unpack_from("!Q", buf, 2)[0]
            if len(buf) < start + n:
                break
            out.append(bytes(buf[start : start + n]))
            del buf[: start + n]
    return out


async def test_a_cut_write_keeps_its_tail_for_the_next_send(pair: tuple[WsConnection, socket.socket]) -> None:
    conn, peer = pair
    big, small = bytes(range(256)) * 2000, b"after"
    assert conn.send_batch_nowait([big])  # far more than the kernel buffers take
    assert conn.write_pending
    assert not conn.send_batch_nowait([small])  # the tail must go first
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send_batch, [small])
            got = await read_messages(peer, 2)
    assert got == [big, small]
    assert not conn.write_pending


async def test_no_write_while_another_task_writes(pair: tuple[WsConnection, socket.socket]) -> None:
    conn, peer = pair
    big = b"b" * 500_000
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send_batch, [big])
            await trio.testing.wait_all_tasks_blocked()  # the writer waits for room
            assert not conn.send_batch_nowait([b"x"])
            got = await read_messages(peer, 1)
    assert got == [big]
    assert conn.send_batch_nowait([b"now"])
    with trio.fail_after(5):
        assert await read_messages(peer, 1) == [b"now"]


async def test_a_write_cancelled_half_way_leaves_no_torn_frame(
    pair: tuple[WsConnection, socket.socket],
) -> None:
    conn, peer = pair
    big = b"c" * 300_000
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send_batch, [big])
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert conn.write_pending
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send_batch, [b"next"])
            got = await read_messages(peer, 2)
    assert got == [big, b"next"]


async def test_keepalive_does_not_ping_into_a_cut_frame(pair: tuple[WsConnection, socket.socket]) -> None:
    conn, peer = pair
    conn.send_batch_nowait([b"d" * 300_000])
    conn.check_keepalive(trio.current_time() + 1000.0)  # overdue, but a frame is half written
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send_batch, [])
            got = await read_messages(peer, 1)
    assert got == [b"d" * 300_000]
    assert conn.statistics().pings_sent == 0


async def test_flush_hub_writes_inline_or_wakes_the_writer() -> None:
    hub = FlushHub()
    written: list[list[bytes]] = []
    accept = True

    def sink(frames: list[bytes]) -> bool:
        if accept:
            written.append(list(frames))
        return accept

    box = Outbox(10, 1000)
    box.hub, box.sink = hub, sink
    woken: list[list[bytes]] = []

    async def writer() -> None:
        woken.append(await box.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        hub.active = True
        box.offer(b"one")
        box.offer(b"two")
        assert hub.touched == [box] and not written  # deferred until the step ends
        hub.flush()
        assert written == [[b"one", b"two"]] and len(box) == 0
        accept = False
        box.offer(b"three")  # hub inactive: the writer is woken at once
        await trio.testing.wait_all_tasks_blocked()
    assert woken == [[b"three"]]
