"""The one benchmark client for asgard.v1.Routing: grpclib (betterproto2 messages) on uvloop.

    python -m bench.rpc.client {unary,pingpong,stream} --port N [--count N] [--warmup N] [--size B]
    python -m bench.rpc.client drain --port N --node TOKEN DEVICE NETWORK   # (started by unary)

unary     sequential Send calls, each a new HTTP/2 stream; latency per call.
pingpong  one Connect stream; send one frame, wait for its echo, repeat; latency per round trip.
stream    one Connect stream; a sender task writes --count frames as fast as it can while the
          reader counts echoes; rate = frames / time from first send to last echo.
Against a full node (`--node TOKEN DEVICE NETWORK`, server kind "node") the frames are real
DIRECT device frames from DEVICE to itself: the Connect stream first registers DEVICE (a device
session), and the node's router sends each frame back to that session, byte for byte — the
"echo" is real routing. For unary, a second Connect session of DEVICE, in a process of its own
(`drain` mode: as another device would be), takes the routed frames while the Send calls run
(Send to an offline device would be refused), so the measured client does what it does against
the plain server: a call and its ack.
Prints one JSON object. Loopback only; the whole run has a hard deadline (--deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from typing import Any

import uvloop
from grpclib.client import Channel
from grpclib.const import Cardinality

from protos.gen.asgard import v1 as pb

METADATA = {"authorization": "Bearer asg_bench"}
CONNECT = "/asgard.v1.Routing/Connect"
NODE: dict[str, str] = {}  # token, device, network when benchmarking a full node


def frame(i: int, size: int) -> bytes:
    """A device-frame-shaped blob: version, type DIRECT, flags, message id, then padding; against
    a node, a real DIRECT frame from the bench device to itself (`size` bytes in all)."""
    if NODE:
        device = uuid.UUID(NODE["device"]).bytes
        header = bytes([1, 0x10, 0, 0]) + i.to_bytes(8, "big") + device + device
        payload = bytes(max(0, size - 48))
        return header + len(payload).to_bytes(4, "big") + payload
    return bytes([1, 0x10, 0, 0]) + i.to_bytes(8, "big") + bytes(max(0, size - 12))


async def register(stream: Any) -> None:
    """Against a node: WELCOME in, REGISTER out, REGISTERED in (a device session)."""
    if not NODE:
        return
    await stream.recv_message()  # WELCOME
    body = json.dumps(
        {"device_id": NODE["device"], "network_id": NODE["network"], "name": "bench", "world_type": "virtual"}
    ).encode()
    device = uuid.UUID(NODE["device"]).bytes
    header = (
        bytes([1, 0x03, 0, 0]) + (1).to_bytes(8, "big") + device + bytes(16) + len(body).to_bytes(4, "big")
    )
    await stream.send_message(pb.ConnectFrame(frame=header + body))
    while True:
        reply = await stream.recv_message()
        if reply is None:
            raise RuntimeError("the node ended the session before REGISTERED")
        if reply.frame[1] == 0x04:
            return
        if reply.frame[1] == 0x07:
            raise RuntimeError(f"REGISTER refused: {reply.frame[48:]!r}")


def summary(samples_ns: list[int], elapsed_s: float, count: int, cpu_s: float) -> dict[str, float]:
    """Latency percentiles, rate, and this client's own CPU seconds over the measured part."""
    ordered = sorted(samples_ns)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1000 if ordered else 0.0

    return {
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": ordered[-1] / 1000 if ordered else 0.0,
        "rate_per_s": count / elapsed_s if elapsed_s else 0.0,
        "elapsed_s": elapsed_s,
        "client_cpu_s": cpu_s,
    }


async def unary(channel: Channel, count: int, warmup: int, size: int, port: int) -> dict[str, float]:
    if not NODE:
        return await _unary(channel, count, warmup, size)
    # The destination must be online: another process holds a session that drains what is routed.
    cmd = [sys.executable, "-m", "bench.rpc.client", "drain", "--port", str(port),
           "--node", NODE["token"], NODE["device"], NODE["network"]]  # fmt: skip
    drain = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    try:
        assert drain.stdout is not None
        line = await drain.stdout.readline()
        if line.strip() != b"DRAINING":
            raise RuntimeError(f"the drain session did not start: {line!r}")
        return await _unary(channel, count, warmup, size)
    finally:
        if drain.returncode is None:
            drain.terminate()
        await drain.wait()


async def drain(channel: Channel) -> None:
    """A device session that reads and drops what the node routes to it, until SIGTERM."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await _drain_session(channel)


async def _drain_session(channel: Channel) -> None:
    async with channel.request(
        CONNECT, Cardinality.STREAM_STREAM, pb.ConnectFrame, pb.ConnectFrame, metadata=METADATA
    ) as stream:
        await stream.send_request()
        await register(stream)
        print("DRAINING", flush=True)
        async for _ in stream:
            pass


async def _unary(channel: Channel, count: int, warmup: int, size: int) -> dict[str, float]:
    stub = pb.RoutingStub(channel, timeout=5, metadata=METADATA)
    samples = []
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(warmup + count):
        t0 = time.perf_counter_ns()
        ack = await stub.send(pb.SendRequest(frame=frame(i, size)))
        t1 = time.perf_counter_ns()
        assert ack.message_id == i
        if i >= warmup:
            samples.append(t1 - t0)
        if i == warmup - 1:
            start, cpu = time.perf_counter(), time.process_time()
    return summary(samples, time.perf_counter() - start, count, time.process_time() - cpu)


async def pingpong(channel: Channel, count: int, warmup: int, size: int) -> dict[str, float]:
    samples = []
    async with channel.request(
        CONNECT, Cardinality.STREAM_STREAM, pb.ConnectFrame, pb.ConnectFrame, metadata=METADATA
    ) as stream:
        await stream.send_request()
        await register(stream)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(warmup + count):
            payload = frame(i, size)
            t0 = time.perf_counter_ns()
            await stream.send_message(pb.ConnectFrame(frame=payload))
            reply = await stream.recv_message()
            t1 = time.perf_counter_ns()
            assert reply is not None
            assert reply.frame == payload
            if i >= warmup:
                samples.append(t1 - t0)
            if i == warmup - 1:
                start, cpu = time.perf_counter(), time.process_time()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        await stream.end()
        async for _ in stream:
            pass
    return summary(samples, elapsed, count, cpu)


async def throughput(channel: Channel, count: int, size: int) -> dict[str, float]:
    async with channel.request(
        CONNECT, Cardinality.STREAM_STREAM, pb.ConnectFrame, pb.ConnectFrame, metadata=METADATA
    ) as stream:
        await stream.send_request()
        await register(stream)

        async def send_all() -> None:
            for i in range(count):
                await stream.send_message(pb.ConnectFrame(frame=frame(i, size)))
            await stream.end()

        start, cpu = time.perf_counter(), time.process_time()
        sender = asyncio.get_running_loop().create_task(send_all())
        received = 0
        async for _ in stream:
            received += 1
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        await sender
    assert received == count, (received, count)
    return summary([], elapsed, count, cpu)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    channel = Channel("127.0.0.1", args.port)
    try:
        async with asyncio.timeout(args.deadline):
            if args.mode == "drain":
                await drain(channel)
                return {}
            if args.mode == "unary":
                result = await unary(channel, args.count, args.warmup, args.size, args.port)
            elif args.mode == "pingpong":
                result = await pingpong(channel, args.count, args.warmup, args.size)
            else:
                result = await throughput(channel, args.count, args.size)
    finally:
        channel.close()
    return {"mode": args.mode, "count": args.count, "size": args.size, **result}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["unary", "pingpong", "stream", "drain"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--node", nargs=3, metavar=("TOKEN", "DEVICE", "NETWORK"), help="a full node")
    args = parser.parse_args()
    if args.node:
        NODE.update(zip(("token", "device", "network"), args.node, strict=True))
        METADATA["authorization"] = f"Bearer {args.node[0]}"
    if args.mode == "drain":
        uvloop.run(run(args))
        return 0
    print(json.dumps(uvloop.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
