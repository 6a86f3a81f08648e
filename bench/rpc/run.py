"""Head-to-head: Asgard's gRPC router vs a plain grpclib server on asyncio, same client.

    .venv/bin/python -m bench.rpc.run [--rounds 3] [--count 5000] [--stream-count 50000]
                                      [--servers asgard,plain] [--modes unary,pingpong,stream]

Per round, for each mode, the servers run alternately (A B A B ...), each in a fresh process,
against the same client process (bench/rpc/client.py: grpclib on uvloop):
- unary: sequential Routing.Send calls (64 B frame) -> p50/p90/p99/p99.9/max µs;
- pingpong: one Routing.Connect stream, one frame out, its echo back -> latency;
- stream: one Connect stream, --stream-count frames pipelined -> echoed messages per second.
Also reports the server's CPU seconds during the client run (/proc/PID/stat utime+stime) and the
client's own CPU over its measured part as % of one core (near 100: the client is the limit).
Targets (issue 4): p50 and p99 within 1.1x of the plain server; >= 15k msg/s on one stream.
The table gives every server's ratio to `plain` (the server kinds: bench/rpc/servers.py).
Every run goes to bench/results/rpc-<time>.jsonl; the table shows medians over rounds.
Loopback only; each server runs in its own process group and is stopped after its run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bench.rpc.servers import KINDS

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_KINDS = KINDS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextmanager
def server(kind: str) -> Iterator[tuple[int, int, list[str]]]:
    """Start a server process; yield (port, pid, client options); stop it (SIGTERM, then SIGKILL)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [PY, "-m", "bench.rpc.servers", kind, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY"):
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        extra = line.split()[2:]  # the node: token, device, network for the client
        yield port, proc.pid, (["--node", *extra] if extra else [])
    finally:
        with_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def with_group(proc: subprocess.Popen[str], sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def client(mode: str, port: int, count: int, warmup: int, size: int, options: list[str]) -> dict[str, Any]:
    cmd = [PY, "-m", "bench.rpc.client", mode, "--port", str(port), "--count", str(count),
           "--warmup", str(warmup), "--size", str(size), *options]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def one_run(kind: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    count = args.stream_count if mode == "stream" else args.count
    with server(kind) as (port, pid, options):
        client(mode, port, min(200, count), 50, args.size, options)  # connection and code paths warm
        before = cpu_seconds(pid)
        result = client(mode, port, count, args.warmup, args.size, options)
        result["server_cpu_s"] = cpu_seconds(pid) - before
    result["server"] = kind
    return result


def table(runs: list[dict[str, Any]], servers: list[str], modes: list[str]) -> str:
    rounds = len(runs) // max(1, len(servers) * len(modes))
    lines = [
        f"{'mode':9} {'server':13} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>8}"
        f" {'msg/s':>8} {'cpu s':>6} {'cli %':>5}   (µs, medians of {rounds} rounds; cli %: the client's"
        " CPU over the measured part, % of one core)"
    ]
    for mode in modes:
        medians: dict[str, dict[str, float]] = {}
        for kind in servers:
            mine = [r for r in runs if r["server"] == kind and r["mode"] == mode]
            keys = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "rate_per_s", "server_cpu_s")
            medians[kind] = {k: statistics.median(r[k] for r in mine) for k in keys}
            m = medians[kind]
            busy = statistics.median(100 * r.get("client_cpu_s", 0.0) / r["elapsed_s"] for r in mine)
            lines.append(
                f"{mode:9} {kind:13} {m['p50_us']:7.0f} {m['p90_us']:7.0f} {m['p99_us']:7.0f}"
                f" {m['p999_us']:7.0f} {m['max_us']:8.0f} {m['rate_per_s']:8.0f} {m['server_cpu_s']:6.2f}"
                f" {busy:5.0f}"
            )
        if "plain" in medians:
            p = medians["plain"]
            for kind in servers:
                if kind == "plain":
                    continue
                a, head = medians[kind], f"{'':9} {'ratio':13}"
                if mode == "stream":
                    lines.append(f"{head} rate {kind}/plain = {a['rate_per_s'] / p['rate_per_s']:.2f}")
                else:
                    p50, p99 = a["p50_us"] / p["p50_us"], a["p99_us"] / p["p99_us"]
                    lines.append(f"{head} p50 {p50:.2f}x  p99 {p99:.2f}x  ({kind} / plain; target <= 1.10)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--stream-count", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--servers", default="asgard,plain")
    parser.add_argument("--modes", default="unary,pingpong,stream")
    args = parser.parse_args()
    servers = args.servers.split(",")
    modes = args.modes.split(",")
    if unknown := set(servers) - set(SERVER_KINDS):
        parser.error(f"unknown servers: {sorted(unknown)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / time.strftime("rpc-%Y%m%d-%H%M%S.jsonl")
    runs = []
    with out_path.open("w") as out:
        for round_no in range(args.rounds):
            for mode in modes:
                for kind in servers:
                    result = one_run(kind, mode, args)
                    result["round"] = round_no
                    runs.append(result)
                    out.write(json.dumps(result) + "\n")
                    out.flush()
                    print(
                        f"round {round_no} {mode:8} {kind:13} p50 {result['p50_us']:7.0f} µs"
                        f"  p99 {result['p99_us']:7.0f} µs  {result['rate_per_s']:8.0f} msg/s",
                        flush=True,
                    )
    print()
    print(table(runs, servers, modes))
    print(f"\nresults: {out_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
