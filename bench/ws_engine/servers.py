"""The servers under test: echo + room relay on Asgard's engine, and the same on trio-websocket.

    python -m bench.ws_engine.servers {engine,triows} --port P

Paths: `/echo` echoes every message; any other path is a room, and every message a client sends
goes to the other clients of the same path (the protocol of ../shared/anchors/ws_relay.py).
Prints "READY <port> pid=<pid>" when listening. Loopback only; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import os
import signal
import sys

import trio

from node.relay._wsconn import ConnectionClosed, WsConnection
from node.relay._wsserve import WsEngine, WsRequest, serve_ws
from node.relay._wssettings import WsSettings

MAX_MESSAGE_BYTES = 1 << 20


async def engine_main(host: str, port: int) -> None:
    rooms: dict[str, set[WsConnection]] = {}

    async def handler(pending: WsRequest) -> None:
        conn = await pending.accept()
        path = pending.request.path
        if path == "/echo":
            while True:
                await conn.send_batch(await conn.receive_batch())
        room = rooms.setdefault(path, set())
        room.add(conn)
        try:
            while True:
                batch = await conn.receive_batch()
                for other in tuple(room):
                    if other is not conn:
                        with contextlib.suppress(ConnectionClosed):
                            await other.send_batch(batch)
        finally:
            room.discard(conn)
            if not room:
                rooms.pop(path, None)

    settings = WsSettings(max_message_bytes=MAX_MESSAGE_BYTES, ping_interval_s=600)
    await serve_forever(serve_ws, handler, WsEngine(settings), host, port)


async def engine_outbox_main(host: str, port: int) -> None:
    """The room relay as the node's relay is built: reader routes into bounded outboxes, and one
    writer task per connection drains its outbox and sends everything queued in one batch."""
    rooms: dict[str, dict[WsConnection, trio.MemorySendChannel[list[bytes]]]] = {}

    async def writer(conn: WsConnection, outbox: trio.MemoryReceiveChannel[list[bytes]]) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for first in outbox:
                batch = list(first)
                while True:
                    try:
                        batch += outbox.receive_nowait()
                    except trio.WouldBlock:
                        break
                await conn.send_batch(batch)

    async def handler(pending: WsRequest) -> None:
        conn = await pending.accept()
        path = pending.request.path
        room = rooms.setdefault(path, {})
        send, receive = trio.open_memory_channel[list[bytes]](1024)
        room[conn] = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, conn, receive)
                while True:
                    batch = await conn.receive_batch()
                    for other, outbox in tuple(room.items()):
                        if other is not conn:
                            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                                outbox.send_nowait(batch)
        finally:
            room.pop(conn, None)
            if not room:
                rooms.pop(path, None)

    settings = WsSettings(max_message_bytes=MAX_MESSAGE_BYTES, ping_interval_s=600)
    await serve_forever(serve_ws, handler, WsEngine(settings), host, port)


async def triows_main(host: str, port: int) -> None:
    from trio_websocket import ConnectionClosed as TwClosed
    from trio_websocket import WebSocketRequest, serve_websocket

    rooms: dict[str, set] = {}

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        path = request.path
        try:
            if path == "/echo":
                while True:
                    await ws.send_message(await ws.get_message())
            room = rooms.setdefault(path, set())
            room.add(ws)
            try:
                while True:
                    msg = await ws.get_message()
                    for other in tuple(room):
                        if other is not ws:
                            with contextlib.suppress(TwClosed):
                                await other.send_message(msg)
            finally:
                room.discard(ws)
                if not room:
                    rooms.pop(path, None)
        except TwClosed:
            pass

    async def serve(handler, _engine, *, host, port, task_status=trio.TASK_STATUS_IGNORED):
        # The spike's tuned settings: bigger receive buffer and queue than the defaults.
        await serve_websocket(
            handler,
            host,
            port,
            ssl_context=None,
            handler_nursery=None,
            max_message_size=MAX_MESSAGE_BYTES,
            message_queue_size=64,
            receive_buffer_size=65536,
            task_status=task_status,
        )

    await serve_forever(serve, handler, None, host, port)


async def serve_forever(serve, handler, engine, host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        started = await nursery.start(functools.partial(serve, handler, engine, host=host, port=port))
        bound = started[1] if isinstance(started, tuple) else started.port
        print(f"READY {bound} pid={os.getpid()}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def websockets_main(host: str, port: int) -> None:
    """The same two paths with `websockets` on uvloop (echo reference; the room relay is the anchor)."""
    import asyncio

    import uvloop
    from websockets.asyncio.server import serve

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        async for msg in ws:
            await ws.send(msg)

    async def run() -> None:
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
        async with serve(handler, host, port, compression=None, max_size=MAX_MESSAGE_BYTES) as srv:
            bound = srv.sockets[0].getsockname()[1]
            print(f"READY {bound} pid={os.getpid()}", flush=True)
            await stop

    uvloop.run(run())


def raise_nofile_limit() -> None:
    """Let a bench process hold thousands of sockets (the soft limit is often 1024)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["engine", "engine-outbox", "triows", "websockets"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("refusing to listen on a non-loopback address")
    raise_nofile_limit()
    if args.impl == "websockets":
        websockets_main(args.host, args.port)
    else:
        mains = {"engine": engine_main, "engine-outbox": engine_outbox_main, "triows": triows_main}
        trio.run(mains[args.impl], args.host, args.port)


if __name__ == "__main__":
    main()
