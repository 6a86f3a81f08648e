"""Head-to-head: Asgard's WebSocket engine vs `websockets` on uvloop vs trio-websocket.

    .venv/bin/python -m bench.ws_engine.run [--rounds 3] [--count 5000] [--tp-count 100000]

Runs, alternating the servers within each round (A B C A B C ...), with the same clients:
- relay ping-pong (64 B, 4 KiB): ../shared/anchors/pubsub_bench.py --proto ws on uvloop, two
  clients in one room; servers: our room relay, the anchor ws_relay.py, trio-websocket;
- relay one-way throughput (64 B, 4 KiB): the same tool's `throughput` mode;
- echo round trip (64 B, 4 KiB): echo_client.py with websockets on uvloop, and with a raw
  blocking socket (`echo_raw`: the server's own cost, no client library in the figure);
- resident memory per idle connection with --idle connections open (server RSS delta / N).
Prints medians over rounds and writes every run as a JSON line to bench/results/.
Loopback only; every server is started in its own process group and stopped at the end.
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
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANCHORS = ROOT.parent / "shared" / "anchors"
RESULTS = ROOT / "bench" / "results"
PY = sys.executable

SERVERS = {
    "asgard": [PY, "-m", "bench.ws_engine.servers", "engine"],
    "asgard-outbox": [PY, "-m", "bench.ws_engine.servers", "engine-outbox"],
    "trio-websocket": [PY, "-m", "bench.ws_engine.servers", "triows"],
    "websockets": [PY, "-m", "bench.ws_engine.servers", "websockets"],
    "anchor-relay": [PY, str(ANCHORS / "ws_relay.py"), "--uvloop", "--no-compression"],
}
RELAY_SET = ("asgard", "asgard-outbox", "anchor-relay", "trio-websocket")
ECHO_SET = ("asgard", "websockets", "trio-websocket")
IDLE_SET = ("asgard", "anchor-relay", "trio-websocket")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(name: str) -> Iterator[tuple[int, int]]:
    """Start a server in its own process group; yield (port, pid); stop it afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*SERVERS[name], "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "READY" not in line and "listening" not in line:
            raise SystemExit(f"{name} did not start: {line!r}")
        yield port, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_json(argv: list[str], timeout_s: float) -> dict[str, object]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=True, cwd=ROOT)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def pubsub(mode: str, port: int, pid: int, size: int, count: int, room: str) -> dict[str, object]:
    argv = [PY, str(ANCHORS / "pubsub_bench.py"), mode, "--proto", "ws", "--uvloop"]
    argv += ["--no-compression", "--url", f"ws://127.0.0.1:{port}/{room}", "--size", str(size)]
    argv += ["--count", str(count), "--server-pid", str(pid), "--json", "--deadline", "120"]
    return run_json(argv, 180)


def echo(port: int, pid: int, size: int, count: int, *, raw: bool = False) -> dict[str, object]:
    argv = [PY, "-m", "bench.ws_engine.echo_client", "--url", f"ws://127.0.0.1:{port}/echo"]
    argv += ["--size", str(size), "--count", str(count)] + (["--raw"] if raw else [])
    c0 = cpu_seconds(pid)
    result = run_json(argv, 120)
    result["server_cpu_s"] = cpu_seconds(pid) - c0
    return result


def idle_memory(port: int, pid: int, count: int) -> dict[str, object]:
    """Open `count` idle WebSocket connections; report the server's RSS growth per connection."""
    request = (
        f"GET /idle HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    before = rss_bytes(pid)
    socks = []
    deadline = time.monotonic() + 120
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(request)
            if not s.recv(4096).startswith(b"HTTP/1.1 101"):
                raise SystemExit("idle connection was not accepted")
            socks.append(s)
        time.sleep(1.0)  # let the server settle; this measures memory, it does not synchronise
        after = rss_bytes(pid)
    finally:
        for s in socks:
            s.close()
    return {
        "connections": len(socks),
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "bytes_per_connection": (after - before) / max(1, len(socks)),
    }


def one_round(args: argparse.Namespace, round_no: int, emit) -> None:  # type: ignore[no-untyped-def]
    wanted = set(args.only.split(",")) if args.only else None

    def on(test: str) -> bool:
        return wanted is None or test in wanted

    servers = set(args.servers.split(",")) if args.servers else None

    def use(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if servers is None or n in servers)

    for size in (64, 4096):
        for name in use(RELAY_SET):
            if on("relay_pingpong"):
                with server(name) as (port, pid):
                    room = f"pp{round_no}{size}"
                    result = pubsub("pingpong", port, pid, size, args.count, room)
                    emit(name, "relay_pingpong", size, result)
            if on("relay_oneway"):
                with server(name) as (port, pid):
                    n = args.tp_count if size == 64 else args.tp_count // 2
                    emit(name, "relay_oneway", size, pubsub("throughput", port, pid, size, n, "tp"))
        for name in use(ECHO_SET) if on("echo") else ():
            with server(name) as (port, pid):
                emit(name, "echo", size, echo(port, pid, size, args.count))
        for name in use(ECHO_SET) if on("echo_raw") else ():
            with server(name) as (port, pid):
                emit(name, "echo_raw", size, echo(port, pid, size, args.count, raw=True))
    if args.idle and on("idle_memory"):
        for name in use(IDLE_SET):
            with server(name) as (port, pid):
                emit(name, "idle_memory", 0, idle_memory(port, pid, args.idle))


def summarise(rows: list[dict[str, object]]) -> None:
    groups: dict[tuple[str, int, str], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((str(row["test"]), int(row["size"]), str(row["server"])), []).append(row)

    def med(items: list[dict[str, object]], key: str) -> float:
        values = [float(i[key]) for i in items if i.get(key) is not None]  # type: ignore[arg-type]
        return statistics.median(values) if values else float("nan")

    print(
        f"\n{'test':<15}{'size':>6} {'server':<15}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>9}"
        f"{'max':>9}{'msg/s':>9}{'cpu s':>7}{'B/conn':>9}  (medians over rounds; µs)"
    )
    for (test, size, name), items in sorted(groups.items()):
        rate = med(items, "e2e_msg_s") if test == "relay_oneway" else float("nan")
        print(
            f"{test:<15}{size:>6} {name:<15}{med(items, 'p50_us'):>8.0f}{med(items, 'p90_us'):>8.0f}"
            f"{med(items, 'p99_us'):>8.0f}{med(items, 'p999_us'):>9.0f}{med(items, 'max_us'):>9.0f}"
            f"{rate:>9.0f}{med(items, 'server_cpu_s'):>7.2f}{med(items, 'bytes_per_connection'):>9.0f}"
            f"  n={len(items)}"
        )


def print_ratios(rows: list[dict[str, object]]) -> None:
    """Asgard vs its reference, per round (the runs of one round are adjacent in time)."""
    refs = {
        "relay_pingpong": "anchor-relay",
        "relay_oneway": "anchor-relay",
        "echo": "websockets",
        "echo_raw": "websockets",
    }
    by_key: dict[tuple[str, int, str], list[dict[str, object]]] = {}
    for row in rows:
        by_key.setdefault((str(row["test"]), int(row["size"]), str(row["server"])), []).append(row)
    print("\nasgard / reference, median of per-round ratios (< 1 = asgard better; rate: > 1 better)")
    for (test, size, name), mine in sorted(by_key.items()):
        if name != "asgard" or test not in refs:
            continue
        theirs = by_key.get((test, size, refs[test]), [])
        keys = ["e2e_msg_s", "server_cpu_s"] if test == "relay_oneway" else ["p50_us", "p99_us"]
        cells = []
        for key in keys:
            ratios = [float(a[key]) / float(b[key]) for a, b in zip(mine, theirs, strict=False)]  # type: ignore[arg-type]
            cells.append(f"{key} {statistics.median(ratios):.2f}" if ratios else f"{key} -")
        print(f"  {test:<15}{size:>6}  vs {refs[test]:<13} " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000, help="round trips per ping-pong run")
    parser.add_argument("--tp-count", type=int, default=100000, help="64 B messages per one-way run")
    parser.add_argument("--idle", type=int, default=5000, help="idle connections (0 = skip)")
    parser.add_argument(
        "--only", default="", help="comma list of relay_pingpong,relay_oneway,echo,echo_raw,idle_memory"
    )
    parser.add_argument("--servers", default="", help="comma list of server names (default: all)")
    args = parser.parse_args()
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"ws_engine-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    rows: list[dict[str, object]] = []
    with out_path.open("w") as out:

        def emit(name: str, test: str, size: int, result: dict[str, object]) -> None:
            row = {"server": name, "test": test, "size": size, **result}
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row), flush=True)

        for round_no in range(args.rounds):
            one_round(args, round_no, emit)
    summarise(rows)
    print_ratios(rows)
    print(f"\nJSON lines: {out_path}")


if __name__ == "__main__":
    main()
