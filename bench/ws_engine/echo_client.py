"""Echo round-trip client: `websockets` on uvloop, one connection, send one message, await it back.

    python -m bench.ws_engine.echo_client --url ws://127.0.0.1:P/echo --size 64 --count 5000

Prints one JSON object: sorted-sample percentiles in µs. Bounded by --count and --deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

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
    samples.sort()
    return {
        "n": len(samples),
        "p50_us": percentile(samples, 50),
        "p90_us": percentile(samples, 90),
        "p99_us": percentile(samples, 99),
        "p999_us": percentile(samples, 99.9),
        "max_us": samples[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args()
    if not args.url.startswith(("ws://127.", "ws://[::1]", "ws://localhost")):
        raise SystemExit("loopback targets only")
    result = uvloop.run(run(args.url, args.size, args.count, args.warmup, args.deadline))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
