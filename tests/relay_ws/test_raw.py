"""The engine byte by byte: protocol errors, handshake limits, keepalive and write deadlines."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from node.relay._wsconn import ConnectionClosed, WsConnection
from node.relay._wsserve import WsEngine, WsRequest
from node.relay._wssettings import WsSettings
from wire.ws import HandshakeRequest, decode_handshake_untrusted

TIMEOUT_S = 10
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


async def echo_handler(pending: WsRequest) -> None:
    conn = await pending.accept()
    while True:
        await conn.send_batch(await conn.receive_batch())


async def connected(start_server, raw_clients, raw_client_cls, handler=echo_handler, **settings):
    port, engine = await start_server(handler, **settings)
    client = await raw_client_cls.connect(port)
    raw_clients.append(client)
    head = await client.handshake()
    assert head.startswith(b"HTTP/1.1 101 ")
    return client, engine


async def test_unmasked_frame_closes_1002(start_server, raw_clients, raw_client_cls, frame) -> None:
    with trio.fail_after(TIMEOUT_S):
        client, _ = await connected(start_server, raw_clients, raw_client_cls)
        await client.send(frame(OP_BINARY, b"hi", masked=False))
        assert await client.read_close() == 1002
        assert await client.read_frame() is None  # then the server closes TCP


async def test_many_frames_in_one_write_and_frames_glued_to_handshake(
    start_server, raw_clients, raw_client_cls, frame
) -> None:
    port, engine = await start_server(echo_handler)
    client = await raw_client_cls.connect(port)
    raw_clients.append(client)
    request = (
        b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    frames = b"".join(frame(OP_BINARY, bytes([i]) * i) for i in range(50))
    with trio.fail_after(TIMEOUT_S):
        await client.send(request + frame(OP_PING, b"p") + frames)
        assert (await client.read_http()).startswith(b"HTTP/1.1 101")
        assert await client.read_frame() == (OP_PONG, b"p")
        for i in range(50):
            assert await client.read_frame() == (OP_BINARY, bytes([i]) * i)
    [conn] = engine.connections
    stats = conn.statistics()
    assert stats.messages_in == 50
    assert stats.messages_out == 50
    assert stats.recv_calls < 50  # batched: far fewer reads than messages


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n", b"426"),
        (b"BREW /echo HTTP/1.1\r\nHost: t\r\n\r\n", b"405"),
        (b"GET /echo HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n", b"400"),
        (b"GET /echo HTTP/1.1\r\nX: " + b"a" * 9000, b"431"),
    ],
)
async def test_bad_upgrade_requests_get_http_errors(
    start_server, raw_clients, raw_client_cls, request_bytes: bytes, status: bytes
) -> None:
    port, engine = await start_server(echo_handler)
    client = await raw_client_cls.connect(port)
    raw_clients.append(client)
    with trio.fail_after(TIMEOUT_S):
        await client.send(request_bytes)
        head = await client.read_http()
    assert head.split(b" ")[1] == status
    assert engine.statistics().handshakes_failed == 1


async def test_handshake_deadline(autojump_clock, start_server, raw_clients, raw_client_cls) -> None:
    port, engine = await start_server(echo_handler, handshake_timeout_s=3)
    client = await raw_client_cls.connect(port)
    raw_clients.append(client)
    await client.send(b"GET /echo HTTP/1.1\r\n")  # and then nothing
    start = trio.current_time()
    with trio.fail_after(TIMEOUT_S):
        assert await client.read_frame() is None  # EOF
    assert 3 <= trio.current_time() - start < 4
    assert engine.statistics().handshakes_failed == 1


async def test_handler_error_closes_1011_and_no_decision_is_500(
    start_server, raw_clients, raw_client_cls, caplog
) -> None:
    async def failing(pending: WsRequest) -> None:
        if pending.request.path == "/undecided":
            return
        await pending.accept()
        raise ValueError("boom")

    port, _ = await start_server(failing)
    with trio.fail_after(TIMEOUT_S):
        client = await raw_client_cls.connect(port)
        raw_clients.append(client)
        await client.handshake("/x")
        assert await client.read_close() == 1011
        other = await raw_client_cls.connect(port)
        raw_clients.append(other)
        assert (await other.handshake("/undecided")).startswith(b"HTTP/1.1 500")
    assert "boom" in caplog.text


def make_request() -> HandshakeRequest:
    raw = (
        b"GET /t HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    parsed = decode_handshake_untrusted(raw)
    assert parsed is not None
    return parsed[0]


async def test_keepalive_pings_then_closes_1011(autojump_clock, nursery, raw_client_cls) -> None:
    engine = WsEngine(WsSettings(ping_interval_s=20, pong_timeout_s=10))
    nursery.start_soon(engine.run_keepalive)
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    start = trio.current_time()
    with trio.fail_after(100):
        async with trio.open_nursery() as inner:

            async def reader() -> None:
                with pytest.raises(ConnectionClosed) as info:
                    await conn.receive_batch()
                assert info.value.code == 1011
                assert info.value.local

            inner.start_soon(reader)
            assert await client.read_frame() == (OP_PING, b"")
            pinged = trio.current_time() - start
            assert 20 <= pinged <= 26  # the sweep runs every min(interval, timeout) / 4
            assert await client.read_close() == 1011
            closed = trio.current_time() - start
            assert 30 <= closed <= 36
    assert conn.statistics().pings_sent == 1
    assert conn not in engine.connections
    client.close()


async def test_keepalive_answered_keeps_connection(autojump_clock, nursery, raw_client_cls, frame) -> None:
    engine = WsEngine(WsSettings(ping_interval_s=20, pong_timeout_s=10))
    nursery.start_soon(engine.run_keepalive)
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())

    async def answer_pings() -> None:
        while (got := await client.read_frame()) is not None:
            if got[0] == OP_PING:
                await client.send(frame(OP_PONG, got[1]))

    with trio.fail_after(1000):
        async with trio.open_nursery() as inner:
            inner.start_soon(answer_pings)
            with trio.move_on_after(200):
                await conn.receive_batch()  # pongs are not messages: this waits the whole time
            assert conn.closed is None
            assert conn.statistics().pings_sent >= 8
            await client.send(frame(OP_BINARY, b"still here"))
            assert await conn.receive_batch() == [b"still here"]
            inner.cancel_scope.cancel()
    client.close()
    conn.close_nowait()


async def test_traffic_counts_as_life_no_ping_while_messages_arrive(
    autojump_clock, nursery, raw_client_cls, frame
) -> None:
    engine = WsEngine(WsSettings(ping_interval_s=20, pong_timeout_s=10))
    nursery.start_soon(engine.run_keepalive)
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    with trio.fail_after(1000):
        for i in range(20):  # one message every 15 s for 300 s: never 20 s of silence
            await trio.sleep(15)
            await client.send(frame(OP_BINARY, bytes([i])))
            assert await conn.receive_batch() == [bytes([i])]
    assert conn.statistics().pings_sent == 0
    assert conn.closed is None
    client.close()
    conn.close_nowait()


async def test_large_batch_partial_writes_and_iov_max(raw_client_cls) -> None:
    engine = WsEngine()
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    messages = [i.to_bytes(4, "big") * (1 + i % 700) for i in range(3000)]  # 6000 iovecs, ~4 MiB

    async def read_all() -> list[bytes]:
        got = []
        for _ in messages:
            f = await client.read_frame()
            assert f is not None
            got.append(f[1])
        return got

    with trio.fail_after(TIMEOUT_S * 3):
        async with trio.open_nursery() as inner:
            result: list[list[bytes]] = []

            async def reader() -> None:
                result.append(await read_all())

            inner.start_soon(reader)
            await conn.send_batch(messages)
    assert result[0] == messages
    stats = conn.statistics()
    assert stats.messages_out == 3000
    assert stats.sendmsg_calls > 1  # the socket buffer filled up: partial writes were resumed
    client.close()
    conn.close_nowait()


async def test_write_deadline_aborts_stuck_consumer(autojump_clock, raw_client_cls) -> None:
    engine = WsEngine(WsSettings(write_timeout_s=5))
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    start = trio.current_time()
    with trio.fail_after(60), pytest.raises(ConnectionClosed) as info:
        await conn.send_batch([b"x" * 65536] * 200)  # the client never reads
    assert info.value.code == 1008
    assert info.value.reason == "write timed out"
    assert 5 <= trio.current_time() - start < 6
    with pytest.raises(ConnectionClosed):
        await conn.send_batch([b"late"])
    client.close()


async def test_aclose_waits_for_close_reply_within_deadline(autojump_clock, raw_client_cls, frame) -> None:
    engine = WsEngine(WsSettings(close_timeout_s=4))
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    start = trio.current_time()
    with trio.fail_after(60):
        await conn.aclose(1000, "done")  # the peer never answers
    assert 4 <= trio.current_time() - start < 5
    assert await client.read_close() == 1000
    assert conn.closed is not None
    assert conn.closed.code == 1000

    client2, server_sock2 = raw_client_cls.pair()
    conn2 = WsConnection(server_sock2, engine, make_request())
    await client2.send(frame(OP_CLOSE, struct.pack("!H", 1000)))
    start = trio.current_time()
    with trio.fail_after(60):
        await conn2.aclose(1000)
    assert trio.current_time() - start < 1  # the reply ended it at once
    assert conn2.closed is not None
    assert not conn2.closed.local
    client.close()
    client2.close()


async def test_close_after_messages_delivers_messages_first(raw_client_cls, frame) -> None:
    engine = WsEngine()
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    await client.send(frame(OP_BINARY, b"a") + frame(OP_BINARY, b"b") + frame(OP_CLOSE, b""))
    with trio.fail_after(TIMEOUT_S):
        assert await conn.receive_batch() == [b"a", b"b"]
        with pytest.raises(ConnectionClosed) as info:
            await conn.receive_batch()
        assert info.value.code == 1005
        assert await client.read_close() == 1000  # no status in, normal closure out
    client.close()


async def test_eof_without_close_is_1006(raw_client_cls) -> None:
    engine = WsEngine()
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    client.close()
    with trio.fail_after(TIMEOUT_S), pytest.raises(ConnectionClosed) as info:
        await conn.receive_batch()
    assert info.value.code == 1006


async def test_apply_settings_live_keeps_restart_only_fields() -> None:
    engine = WsEngine(WsSettings(receive_buffer_bytes=8192))
    engine.apply_settings(WsSettings(ping_interval_s=3, receive_buffer_bytes=65536))
    assert engine.settings.ping_interval_s == 3
    assert engine.settings.receive_buffer_bytes == 8192
    assert len(engine.receive_buffer) == 8192


async def test_aclose_while_another_task_reads(raw_client_cls, frame) -> None:
    engine = WsEngine()
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    seen: list[ConnectionClosed] = []

    async def reader() -> None:
        with pytest.raises(ConnectionClosed) as info:
            await conn.receive_batch()
        seen.append(info.value)

    async def peer() -> None:
        assert await client.read_close() == 4000
        await client.send(frame(OP_CLOSE, struct.pack("!H", 4000)))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as inner:
            inner.start_soon(reader)
            inner.start_soon(peer)
            await trio.testing.wait_all_tasks_blocked()
            await conn.aclose(4000, "replaced by a newer session")
    assert seen[0].code == 4000
    assert not seen[0].local  # ended by the peer's answer, not by the deadline
    client.close()


async def test_protocol_error_glued_to_handshake_closes_1002(
    start_server, raw_clients, raw_client_cls, frame
) -> None:
    port, _ = await start_server(echo_handler)
    client = await raw_client_cls.connect(port)
    raw_clients.append(client)
    request = (
        b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(TIMEOUT_S):
        await client.send(request + frame(OP_BINARY, b"ok") + frame(OP_BINARY, b"bad", masked=False))
        assert (await client.read_http()).startswith(b"HTTP/1.1 101")
        assert await client.read_close() == 1002


async def test_batches_over_iov_max_are_split_without_waiting(raw_client_cls) -> None:
    from node.relay._wsconn import IOV_MAX

    engine = WsEngine()
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    messages = [i.to_bytes(2, "big") for i in range(3000)]  # 6000 iovecs, 12 KB: fits the buffer
    with trio.fail_after(TIMEOUT_S):
        await conn.send_batch(messages)
        assert conn.statistics().sendmsg_calls == -(-2 * len(messages) // IOV_MAX)
        for m in messages:
            assert await client.read_frame() == (OP_BINARY, m)
    client.close()
    conn.close_nowait()


async def test_reads_without_waiting_still_let_other_tasks_run(nursery, raw_client_cls, frame) -> None:
    """A connection with a backlog (a flooding sender) is read in buffer-sized batches, and every
    batch read without waiting for the socket first lets the other ready tasks run (fairness)."""
    engine = WsEngine(WsSettings(receive_buffer_bytes=4096))
    client, server_sock = raw_client_cls.pair()
    conn = WsConnection(server_sock, engine, make_request())
    payloads = [bytes([i]) * 1000 for i in range(64)]
    ticks = 0

    async def bystander() -> None:
        nonlocal ticks
        while True:
            await trio.lowlevel.checkpoint()
            ticks += 1

    got: list[bytes] = []
    ticks_at_batch = []
    try:
        with trio.fail_after(TIMEOUT_S):
            await client.send(b"".join(frame(OP_BINARY, p) for p in payloads))  # all queued at once
            nursery.start_soon(bystander)
            while len(got) < len(payloads):
                got += await conn.receive_batch()
                ticks_at_batch.append(ticks)
    finally:
        client.close()
        conn.close_nowait()
    assert got == payloads
    assert len(ticks_at_batch) >= 10  # one 4 KiB read per batch
    # Each batch costs the reader one pass of the scheduler, in which the bystander runs once
    # (before or after the reader: Trio shuffles a pass; its first run only starts it), so by
    # batch i it has counted at least i - 2 runs. A reader that kept reading without yielding
    # would return several batches within one pass.
    assert all(seen >= i - 2 for i, seen in enumerate(ticks_at_batch)), ticks_at_batch
