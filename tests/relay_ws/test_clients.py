"""The engine against real clients on loopback: `websockets` (sync, in a thread) and trio-websocket."""

from __future__ import annotations

import os

import pytest
import trio
import trio_websocket
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from node.relay._wsconn import ConnectionClosed
from node.relay._wsserve import WsEngine, WsRequest, serve_ws

TIMEOUT_S = 10


def close_received(ws) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Wait for the server's close frame on a `websockets` sync client; return (code, reason)."""
    with pytest.raises(WsClosed) as info:
        ws.recv(timeout=TIMEOUT_S)
    rcvd = info.value.rcvd
    assert rcvd is not None
    return rcvd.code, rcvd.reason


async def echo_handler(pending: WsRequest) -> None:
    conn = await pending.accept()
    while True:
        await conn.send_batch(await conn.receive_batch())


async def test_echo_websockets_client_sizes_and_order(start_server) -> None:
    port, _engine = await start_server(echo_handler)
    messages = [os.urandom(n) for n in (0, 1, 125, 126, 65535, 65536, 300_000)]
    messages += [i.to_bytes(4, "big") for i in range(2000)]

    def client() -> list[bytes]:
        with connect(f"ws://127.0.0.1:{port}/echo", compression=None, max_size=None) as ws:
            for m in messages:  # pipelined: the server sees many frames per read
                ws.send(m)
            return [ws.recv(timeout=TIMEOUT_S) for _ in messages]

    with trio.fail_after(TIMEOUT_S * 3):
        assert await trio.to_thread.run_sync(client) == messages


async def test_echo_trio_websocket_client(start_server) -> None:
    port, engine = await start_server(echo_handler)
    with trio.fail_after(TIMEOUT_S):
        async with trio_websocket.open_websocket("127.0.0.1", port, "/echo", use_ssl=False) as ws:
            for size in (3, 5000, 70000):
                payload = os.urandom(size)
                await ws.send_message(payload)
                assert await ws.get_message() == payload
        stats = engine.statistics()
    assert stats.connections_accepted == 1


async def test_fragmented_message_is_reassembled(start_server) -> None:
    port, _ = await start_server(echo_handler)

    def client() -> bytes:
        with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as ws:
            ws.send([b"frag", b"men", b"ted"])  # an iterable is sent as fragments
            return ws.recv(timeout=TIMEOUT_S)

    with trio.fail_after(TIMEOUT_S * 2):
        assert await trio.to_thread.run_sync(client) == b"fragmented"


async def test_client_ping_gets_pong(start_server) -> None:
    port, _ = await start_server(echo_handler)

    def client() -> bool:
        with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as ws:
            return ws.ping(b"hello").wait(TIMEOUT_S)  # set when the matching pong arrives

    with trio.fail_after(TIMEOUT_S * 2):
        assert await trio.to_thread.run_sync(client) is True


async def test_client_close_code_reaches_handler_and_is_echoed(start_server) -> None:
    seen: list[ConnectionClosed] = []

    async def handler(pending: WsRequest) -> None:
        conn = await pending.accept()
        try:
            await conn.receive_batch()
        except ConnectionClosed as exc:
            seen.append(exc)
            raise

    port, engine = await start_server(handler)

    def client() -> tuple[int | None, str | None]:
        with connect(f"ws://127.0.0.1:{port}/x", compression=None) as ws:
            ws.close(4001, "bye now")
        return ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason  # type: ignore[union-attr]

    with trio.fail_after(TIMEOUT_S * 2):
        assert await trio.to_thread.run_sync(client) == (4001, "")
    assert seen[0].code == 4001
    assert seen[0].reason == "bye now"
    assert not seen[0].local
    assert engine.statistics().connections_open == 0


async def test_server_close_code_reaches_client(start_server) -> None:
    async def handler(pending: WsRequest) -> None:
        conn = await pending.accept()
        await conn.aclose(4000, "replaced by a newer session")
        assert conn.closed is not None

    port, _ = await start_server(handler)

    def client() -> tuple[int, str]:
        with connect(f"ws://127.0.0.1:{port}/x", compression=None) as ws:
            return close_received(ws)

    with trio.fail_after(TIMEOUT_S * 2):
        assert await trio.to_thread.run_sync(client) == (4000, "replaced by a newer session")


async def test_oversize_message_closes_1009(start_server) -> None:
    port, _ = await start_server(echo_handler, max_message_bytes=1000)

    def client() -> int:
        with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as ws:
            ws.send(b"x" * 1000)
            assert ws.recv(timeout=TIMEOUT_S) == b"x" * 1000
            ws.send(b"x" * 1001)
            return close_received(ws)[0]

    with trio.fail_after(TIMEOUT_S * 2):
        assert await trio.to_thread.run_sync(client) == 1009


async def test_text_message_closes_1003(start_server) -> None:
    port, _ = await start_server(echo_handler)

    def client() -> int:
        with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as ws:
            ws.send("text")
            return close_received(ws)[0]

    with trio.fail_after(TIMEOUT_S * 2):
        assert await trio.to_thread.run_sync(client) == 1003


async def checking_handler(pending: WsRequest) -> None:
    """Refuse like the relay will: wrong path 404, bad Origin 403, missing/bad token 401."""
    req = pending.request
    if req.path != "/v1/ws":
        await pending.reject(404)
    elif req.origin is not None and req.origin != "https://home.example":
        await pending.reject(403, body=b"origin not allowed")
    elif req.bearer_token != "good":
        await pending.reject(401, extra_headers=(("WWW-Authenticate", "Bearer"),))
    else:
        conn = await pending.accept()
        await conn.send_batch([b"welcome"])
        await conn.receive_batch()


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/nope", {"Authorization": "Bearer good"}, 404),
        ("/v1/ws", {"Authorization": "Bearer good", "Origin": "https://evil.example"}, 403),
        ("/v1/ws", {"Authorization": "Bearer bad"}, 401),
        ("/v1/ws", {}, 401),
    ],
)
async def test_handshake_rejections(start_server, path: str, headers: dict[str, str], status: int) -> None:
    port, engine = await start_server(checking_handler)

    def client() -> int:
        try:
            connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers, open_timeout=TIMEOUT_S)
        except InvalidStatus as exc:
            return exc.response.status_code
        raise AssertionError("accepted")

    with trio.fail_after(TIMEOUT_S * 2):
        assert await trio.to_thread.run_sync(client) == status
    assert engine.statistics().handshakes_rejected == 1


async def test_handshake_accepted_with_token_and_origin(start_server) -> None:
    port, _ = await start_server(checking_handler)
    headers = {"Authorization": "Bearer good", "Origin": "https://home.example"}

    def client() -> bytes:
        with connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers=headers) as ws:
            return ws.recv(timeout=TIMEOUT_S)

    with trio.fail_after(TIMEOUT_S * 2):
        assert await trio.to_thread.run_sync(client) == b"welcome"


async def test_server_shutdown_sends_going_away(nursery: trio.Nursery) -> None:
    accepted = trio.Event()
    engine = WsEngine()
    server_scope = trio.CancelScope()

    async def handler(pending: WsRequest) -> None:
        conn = await pending.accept()
        accepted.set()
        await conn.receive_batch()

    async def server(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with server_scope:
            await serve_ws(handler, engine, task_status=task_status)

    _host, port = await nursery.start(server)
    codes: list[int] = []

    def client() -> None:
        with connect(f"ws://127.0.0.1:{port}/x", compression=None) as ws:
            codes.append(close_received(ws)[0])

    with trio.fail_after(TIMEOUT_S * 2):
        async with trio.open_nursery() as inner:
            inner.start_soon(trio.to_thread.run_sync, client)
            await accepted.wait()
            server_scope.cancel()
    assert codes == [1001]
    assert engine.statistics().connections_open == 0
