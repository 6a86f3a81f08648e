"""Echo round-trip client: one connection, send one message, wait for it to come back.

    python -m bench.ws_engine.echo_client --url ws://127.0.0.1:P/echo --size 64 --count 5000 [--raw]

Default: the `websockets` client on uvloop. `--raw`: a blocking socket sending a prebuilt masked
frame and reading the echo's bytes, so the figure is the server's cost without a client library.

Prints one JSON object: sorted-sample percentiles in µs. Bounded by --count and --deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time
from urllib.parse import urlparse

import uvloop
from websockets.asyncio.client import connect


def percentile(values: list[float], p: float) -> float:
    k = min(len(values) - 1, max(0, round(p / 100.0 * len(values) + 0.5) - 1))
    return values[k]


async def run(url: str, size: int, count: int, warmup: int, deadline_s: float) -> dict[str, float]:
    payload = b"x" * size
    samples: list[float] = []
    async with connect(url, compression=None, max_size=2**20) as ws:
        end = time.monotonic() + deadline_s
        for i in range(warmup + count):
            if time.monotonic() > end:
                break
            t0 = time.perf_counter_ns()
            await ws.send(payload)
            reply = await asyncio.wait_for(ws.recv(), 5.0)
            t1 = time.perf_counter_ns()
            if len(reply) != size:
                raise SystemExit("echo returned a different size")
            if i >= warmup:
                samples.append((t1 - t0) / 1000.0)
    return summary(samples)


def summary(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {
        "n": len(samples),
        "p50_us": percentile(samples, 50),
        "p90_us": percentile(samples, 90),
        "p99_us": percentile(samples, 99),
        "p999_us": percentile(samples, 99.9),
        "max_us": samples[-1],
    }


def run_raw(url: str, size: int, count: int, warmup: int, deadline_s: float) -> dict[str, float]:
    """Ping-pong with a prebuilt frame (all-zero mask) on a blocking socket."""
    target = urlparse(url)
    sock = socket.create_connection((target.hostname, target.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        f"GET {target.path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit("upgrade refused")
    short = size < 126
    frame = bytes((0x82, 0x80 | size)) if short else struct.pack("!BBH", 0x82, 0x80 | 126, size)
    frame += bytes(4) + b"x" * size  # a zero mask leaves the payload as it is
    reply_bytes = size + (2 if size < 126 else 4)
    samples: list[float] = []
    end = time.monotonic() + deadline_s
    for i in range(warmup + count):
        if time.monotonic() > end:
            break
        t0 = time.perf_counter_ns()
        sock.sendall(frame)
        got = 0
        while got < reply_bytes:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("server closed")
            got += len(chunk)
        if i >= warmup:
            samples.append((time.perf_counter_ns() - t0) / 1000.0)
    sock.close()
    return summary(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--raw", action="store_true", help="blocking socket, no client library")
    args = parser.parse_args()
    if not args.url.startswith(("ws://127.", "ws://[::1]", "ws://localhost")):
        raise SystemExit("loopback targets only")
    if args.raw:
        result = run_raw(args.url, args.size, args.count, args.warmup, args.deadline)
    else:
        result = uvloop.run(run(args.url, args.size, args.count, args.warmup, args.deadline))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
