"""Benchmark servers for asgard.v1.Routing (Send = ack, Connect = echo), one per process.

    python -m bench.rpc.servers asgard --port N   # Asgard's router: island + bridge + Trio backend
    python -m bench.rpc.servers plain  --port N   # reference: a plain grpclib server on asyncio
    python -m bench.rpc.servers asgard-swi --port N   # Asgard with sys.setswitchinterval(0.5 ms)
    python -m bench.rpc.servers plain-uvloop --port N # the reference on uvloop
    python -m bench.rpc.servers node --port N     # the whole node (run_node): real routing
    python -m bench.rpc.servers hop --port N      # the floor of the island design (see below)
    python -m bench.rpc.servers h2trio --port N   # the other design: h2 on Trio (bench/rpc/h2trio.py)
    python -m bench.rpc.servers h2trio-node --port N  # the whole node served that way
    python -m bench.rpc.servers h2fast-node --port N  # ... in the mesh link's form (h2fast.py)

Both use the same generated betterproto2 messages and answer the same way; the reference is what
a user would write without Trio: handlers answer inside the asyncio loop (no auth, no bridge).
`hop` is the least any server built the island way can do: the reference's handlers on grpclib on a
uvloop thread, each request or message crossing to a Trio thread (`TrioToken.run_sync_soon`) and
its answer crossing back (`loop.call_soon_threadsafe`), with no work on the Trio side: no auth, no
bridge bounds, no routing. What it costs over `plain` is the two thread hand-overs alone.
Each prints "READY <port>" when listening and stops on SIGTERM/SIGINT. The node prints
"READY <port> <token> <device> <network>": a service token, and the device and network the client
registers its Connect session as (see bench/rpc/client.py).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from grpclib.const import Cardinality, Handler

from protos.gen.asgard import v1 as pb

TOKEN = "asg_bench"
KINDS = (
    "asgard",
    "asgard-swi",
    "plain",
    "plain-uvloop",
    "node",
    "hop",
    "h2trio",
    "h2trio-node",
    "h2fast-node",
)


class PlainRouting:
    """The reference: acks and echoes inside the asyncio loop, written as plain grpclib handlers."""

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/asgard.v1.Routing/Send": Handler(
                self.send, Cardinality.UNARY_UNARY, pb.SendRequest, pb.SendAck
            ),
            "/asgard.v1.Routing/Connect": Handler(
                self.connect, Cardinality.STREAM_STREAM, pb.ConnectFrame, pb.ConnectFrame
            ),
        }

    async def send(self, stream: Any) -> None:
        request = await stream.recv_message()
        frame = request.frame
        message_id = int.from_bytes(frame[4:12], "big") if len(frame) >= 12 else 0
        await stream.send_message(
            pb.SendAck(message_id=message_id, status=pb.DeliveryStatus.DELIVERED, recipients=1)
        )

    async def connect(self, stream: Any) -> None:
        async for message in stream:
            await stream.send_message(pb.ConnectFrame(frame=message.frame))


async def _plain(port: int) -> None:
    import grpclib.server

    server = grpclib.server.Server([PlainRouting()])
    await server.start("127.0.0.1", port)
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


class HopRouting(PlainRouting):
    """The reference's answers, each request or message first taken to Trio and back."""

    def __init__(self, token: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._token = token
        self._loop = loop

    def _via_trio(self, frame: bytes) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = self._loop.create_future()

        def on_trio() -> None:  # the Trio thread: hand the frame straight back
            self._loop.call_soon_threadsafe(future.set_result, frame)

        self._token.run_sync_soon(on_trio)
        return future

    async def send(self, stream: Any) -> None:
        request = await stream.recv_message()
        frame = await self._via_trio(request.frame)
        message_id = int.from_bytes(frame[4:12], "big") if len(frame) >= 12 else 0
        await stream.send_message(
            pb.SendAck(message_id=message_id, status=pb.DeliveryStatus.DELIVERED, recipients=1)
        )

    async def connect(self, stream: Any) -> None:
        async for message in stream:
            await stream.send_message(pb.ConnectFrame(frame=await self._via_trio(message.frame)))


def _hop(port: int) -> None:
    import threading

    import grpclib.server
    import trio
    import uvloop

    def island(token: Any, ready: threading.Event, stop: threading.Event) -> None:
        async def main() -> None:
            server = grpclib.server.Server([HopRouting(token, asyncio.get_running_loop())])
            await server.start("127.0.0.1", port)
            ready.set()
            while not stop.is_set():  # polled: this bench server has nothing else to stop it
                await asyncio.sleep(0.1)
            server.close()
            await server.wait_closed()

        uvloop.run(main())

    async def main() -> None:
        ready, stop = threading.Event(), threading.Event()
        token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=island, args=(token, ready, stop), name="hop-island")
        thread.start()
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                if not await trio.to_thread.run_sync(ready.wait, 30.0):
                    raise RuntimeError("the hop server's grpclib thread did not start")
                print(f"READY {port}", flush=True)
                async for _ in signals:
                    break
        finally:
            stop.set()
            await trio.to_thread.run_sync(thread.join)

    trio.run(main)


def _asgard(port: int) -> None:
    import trio

    from node.rpc import Principal, RpcServer, RpcSettings
    from node.rpc.testing import MemoryBackend, StaticAuthenticator

    async def main() -> None:
        settings = RpcSettings(host="127.0.0.1", port=port, reflection=False, shutdown_grace_s=1)
        auth = StaticAuthenticator({TOKEN: Principal("bench", "service")})
        server = RpcServer(settings, MemoryBackend(), auth)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(server.serve)
                print(f"READY {address[1]}", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


def _node(port: int, *, h2trio: bool = False, fast: bool = False) -> None:
    """The whole node; with `h2trio`, its gRPC surface is served by bench/rpc/h2trio.py on `port`
    (the node's own router listens on a free port, unused)."""
    import tempfile
    import uuid
    from functools import partial
    from pathlib import Path
    from types import SimpleNamespace

    import trio

    from node.app import ephemeral_overrides, run_node
    from node.auth import SYSTEM, Role
    from node.config import load_settings
    from node.rpc.node_backend import NodeAuthenticator

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            values = ephemeral_overrides(Path(tmp)) | {
                "rpc.port": 0 if h2trio else port,
                "rpc.reflection": False,
                "logging.console": False,
                "turn.enabled": False,
            }
            settings = load_settings(None, environ={}, overrides=values).settings
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(partial(run_node, settings, handle_signals=False))
                network = await handle.registry.create_network(SYSTEM, "bench")
                secret, _ = await handle.tokens.create(name="bench", role=Role.SERVICE)
                ready = f"READY {port} {secret} {uuid.uuid4()} {network.network_id}"
                if h2trio:
                    from bench.rpc import h2trio as served

                    node = SimpleNamespace(
                        backend=handle.extra["rpc"].backend, authenticator=NodeAuthenticator(handle.tokens)
                    )
                    await served.serve(port, node, ready=ready, fast=fast)
                else:
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        print(ready, flush=True)
                        async for _ in signals:
                            break
                handle.stop()

    trio.run(main)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=[*KINDS])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.kind == "asgard":
        _asgard(args.port)
    elif args.kind == "node":
        _node(args.port)
    elif args.kind == "hop":
        _hop(args.port)
    elif args.kind == "h2trio-node":
        _node(args.port, h2trio=True)
    elif args.kind == "h2fast-node":
        _node(args.port, h2trio=True, fast=True)
    elif args.kind == "h2trio":
        from bench.rpc import h2trio

        h2trio.main(args.port)
    elif args.kind == "asgard-swi":
        # Experiment: two busy threads hand the GIL over faster with a shorter switch interval.
        sys.setswitchinterval(0.0005)
        _asgard(args.port)
    elif args.kind == "plain-uvloop":
        import uvloop

        uvloop.run(_plain(args.port))
    else:
        asyncio.run(_plain(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
