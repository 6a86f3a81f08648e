"""Head-to-head: Asgard's relay against ../shared/anchors/ws_relay.py (websockets on uvloop).

    .venv/bin/python -m bench.relay [--rounds 3] [--count 5000] [--tp-count 100000] [--idle 5000]
                                     [--only pingpong,oneway,idle1000,slow,memory]

Both servers are driven by the same client (bench/relay/client.py: `websockets` on uvloop, one
process per role). Within each round every test runs Asgard then the anchor, each on a freshly
started server (A B A B ...):

- pingpong (64 B, 4 KiB): round trips device A -> relay -> device B -> relay -> A;
- oneway (64 B, 4 KiB): one publisher, one subscriber, end-to-end rate (Asgard with an outbox
  that holds the whole burst: see ONEWAY_ENV);
- oneway_raw: the same with plain-socket clients that write prebuilt frames and count what
  arrives, so the figure is the relay's forwarding rate rather than the client library's;
- idle1000: the 64 B ping-pong with 1,000 idle devices connected (Asgard: registered);
- slow: the 64 B ping-pong while another device floods a consumer that never reads;
- memory: resident memory per idle device with --idle devices connected (RSS delta / N).

Asgard runs as `python -m node serve --ephemeral` with the relay's message-rate limit raised
(ASGARD_RELAY__RATE_PER_S) so a benchmark publisher is not closed for flooding; the anchor as
`ws_relay.py --uvloop --no-compression`. Every result is a JSON line in bench/results/relay-*.jsonl
(p50/p90/p99/p99.9/max in µs, rates, server CPU seconds from /proc/PID/stat, Asgard's relay
counters such as frames forwarded by reference); the end prints medians and Asgard/anchor ratios.
Loopback only; every process is started in its own session and killed at the end.
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
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
ANCHORS = ROOT.parent / "shared" / "anchors"
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
CLIENT = [PY, "-m", "bench.relay.client"]
ASGARD_ENV = {
    "ASGARD_LOGGING__CONSOLE": "false",
    "ASGARD_RELAY__RATE_PER_S": "10000000",
    "ASGARD_RELAY__BURST": "10000000",
}
# One-way: the publisher outruns the subscriber (both are the same Python client). The anchor
# slows the publisher down through TCP backpressure; Asgard never makes a sender wait and drops
# best-effort frames beyond the receiver's outbox. To measure forwarding rather than that policy,
# the one-way runs give the subscriber an outbox that holds the whole burst.
ONEWAY_ENV = {"ASGARD_RELAY__OUTBOX_MAX_MESSAGES": "200000", "ASGARD_RELAY__OUTBOX_MAX_BYTES": str(1 << 30)}


@dataclass
class Server:
    name: str
    pid: int
    url: str  # the relay endpoint (Asgard) or the server base (anchor: add a room)
    token: str = ""
    network: str = ""
    api: str = ""
    admin: str = ""

    def endpoint(self, room: str) -> str:
        return self.url if self.name == "asgard" else f"{self.url}/{room}"

    def relay_stats(self) -> dict[str, Any]:
        if self.name != "asgard":
            return {}
        with httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.admin}"}) as api:
            relay: dict[str, Any] = api.get("/api/v1/admin/stats").json()["services"]["relay"]
            return relay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


@contextmanager
def server(name: str, asgard_env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start a fresh server in its own session; stop it (and everything in its group) after."""
    if name == "asgard":
        argv = [PY, "-m", "node", "serve", "--ephemeral"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **ASGARD_ENV, **(asgard_env or {})}
    else:
        port = free_port()
        argv = [PY, str(ANCHORS / "ws_relay.py"), "--uvloop", "--no-compression", "--port", str(port)]
        env = dict(os.environ)
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if name == "asgard":
            yield _asgard(json.loads(line))
        else:
            if "listening" not in line:
                raise SystemExit(f"the anchor did not start: {line!r}")
            yield Server("anchor", proc.pid, f"ws://127.0.0.1:{port}")
    finally:
        _stop(proc)


def _asgard(announcement: dict[str, Any]) -> Server:
    """One network and one service token (it may register any device) on a fresh node."""
    admin = announcement["admin_token"]
    with httpx.Client(base_url=announcement["api"], headers={"Authorization": f"Bearer {admin}"}) as api:
        network = api.post("/api/v1/networks", json={"name": "bench"}).json()["network_id"]
        token = api.post("/api/v1/tokens", json={"name": "bench", "role": "service"}).json()["token"]
    return Server(
        "asgard", announcement["pid"], announcement["relay"], token, network, announcement["api"], admin
    )


def client_argv(srv: Server, role: str, room: str, **options: Any) -> list[str]:
    argv = [*CLIENT, role, "--proto", "asgard" if srv.name == "asgard" else "anchor"]
    argv += ["--url", srv.endpoint(room), "--token", srv.token, "--network", srv.network]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


@contextmanager
def background(argv: list[str], timeout_s: float = 180.0) -> Iterator[subprocess.Popen[str]]:
    """A client role that prints READY and runs until its stdin closes."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout_s
        line = proc.stdout.readline() if proc.stdout else ""
        if "READY" not in line or time.monotonic() > deadline:
            raise SystemExit(f"{argv[3]} did not get ready: {line!r}")
        yield proc
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            _stop(proc)


def run_json(argv: list[str], timeout_s: float = 300.0) -> dict[str, Any]:
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


# ---------------------------------------------------------------------- tests


def pingpong(srv: Server, size: int, count: int) -> dict[str, Any]:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with background(client_argv(srv, "echo", "pp", me=b, peer=a, size=size)):
        c0 = cpu_seconds(srv.pid)
        result = run_json(client_argv(srv, "pingpong", "pp", me=a, peer=b, size=size, count=count))
        result["server_cpu_s"] = cpu_seconds(srv.pid) - c0
    return result


def oneway(srv: Server, size: int, count: int, *, raw: bool = False) -> dict[str, Any]:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    roles = ("rawsub", "rawpub") if raw else ("subscribe", "publish")
    argv = client_argv(srv, roles[0], "tp", me=b, size=size, count=count)
    sub = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    try:
        if "READY" not in (sub.stdout.readline() if sub.stdout else ""):
            raise SystemExit("the subscriber did not get ready")
        c0 = cpu_seconds(srv.pid)
        pub = run_json(client_argv(srv, roles[1], "tp", me=a, peer=b, size=size, count=count))
        out, _ = sub.communicate(timeout=300)
        got = json.loads(out.strip().splitlines()[-1])
        cpu = cpu_seconds(srv.pid) - c0
    finally:
        if sub.poll() is None:
            _stop(sub)  # type: ignore[arg-type]
    elapsed = max(1, got["last_ns"] - pub["pub_t0_ns"]) / 1e9
    return {
        "sent": count,
        "received": got["received"],
        "refused": pub["refused"],
        "e2e_msg_s": got["received"] / elapsed,
        "pub_msg_s": count / max(1, pub["pub_t1_ns"] - pub["pub_t0_ns"]) * 1e9,
        "server_cpu_s": cpu,
    }


def with_idle(srv: Server, idle: int, count: int) -> dict[str, Any]:
    with background(client_argv(srv, "idle", "idle", connections=idle), timeout_s=600):
        result = pingpong(srv, 64, count)
    result["idle_devices"] = idle
    return result


def with_slow_consumer(srv: Server, count: int) -> dict[str, Any]:
    stuck, flooder = str(uuid.uuid4()), str(uuid.uuid4())
    with ExitStack() as stack:
        stack.enter_context(background(client_argv(srv, "slow", "slow", me=stuck)))
        stack.enter_context(background(client_argv(srv, "flood", "slow", me=flooder, peer=stuck, size=4096)))
        time.sleep(1.0)  # let the consumer's buffers fill before measuring (not a synchronisation)
        return pingpong(srv, 64, count)


def memory(srv: Server, idle: int) -> dict[str, Any]:
    before = rss_bytes(srv.pid)
    with background(client_argv(srv, "idle", "mem", connections=idle), timeout_s=900):
        time.sleep(2.0)  # let the server settle after the last registration (a measurement pause)
        after = rss_bytes(srv.pid)
    return {
        "devices": idle,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "bytes_per_device": (after - before) / idle,
    }


TESTS = ("pingpong", "oneway", "oneway_raw", "idle1000", "slow", "memory")


def one_round(args: argparse.Namespace, wanted: set[str], emit: Any) -> None:
    for size in (64, 4096):
        for name in ("asgard", "anchor"):
            if "pingpong" in wanted:
                with server(name) as srv:
                    emit(srv, "pingpong", size, pingpong(srv, size, args.count))
        for name in ("asgard", "anchor"):
            if "oneway" in wanted:
                with server(name, ONEWAY_ENV) as srv:
                    n = args.tp_count if size == 64 else args.tp_count // 4
                    emit(srv, "oneway", size, oneway(srv, size, n))
        for name in ("asgard", "anchor"):
            if "oneway_raw" in wanted:
                with server(name, ONEWAY_ENV) as srv:
                    n = args.tp_count if size == 64 else args.tp_count // 4
                    emit(srv, "oneway_raw", size, oneway(srv, size, n, raw=True))
    for name in ("asgard", "anchor"):
        if "idle1000" in wanted:
            with server(name) as srv:
                emit(srv, "idle1000", 64, with_idle(srv, 1000, args.count))
    for name in ("asgard", "anchor"):
        if "slow" in wanted:
            with server(name) as srv:
                emit(srv, "slow", 64, with_slow_consumer(srv, args.count))
    for name in ("asgard", "anchor"):
        if "memory" in wanted and args.idle:
            with server(name) as srv:
                emit(srv, "memory", 0, memory(srv, args.idle))


# ---------------------------------------------------------------------- report


def median(rows: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def summarise(rows: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["test"], row["size"], row["server"]), []).append(row)
    print(
        f"\n{'test':<10}{'size':>6} {'server':<8}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>9}{'max':>9}"
        f"{'msg/s':>9}{'cpu s':>7}{'B/dev':>8}  (medians over rounds; µs)"
    )
    for (test, size, name), items in sorted(groups.items()):
        print(
            f"{test:<10}{size:>6} {name:<8}{median(items, 'p50_us'):>8.0f}{median(items, 'p90_us'):>8.0f}"
            f"{median(items, 'p99_us'):>8.0f}{median(items, 'p999_us'):>9.0f}{median(items, 'max_us'):>9.0f}"
            f"{median(items, 'e2e_msg_s'):>9.0f}{median(items, 'server_cpu_s'):>7.2f}"
            f"{median(items, 'bytes_per_device'):>8.0f}  n={len(items)}"
        )
    print("\nasgard / anchor, median of per-round ratios (latency and memory: < 1 is better; rate: > 1)")
    for (test, size, name), mine in sorted(groups.items()):
        theirs = groups.get((test, size, "anchor"), [])
        if name != "asgard" or not theirs:
            continue
        rate = ["e2e_msg_s", "server_cpu_s"]
        keys = {"oneway": rate, "oneway_raw": rate, "memory": ["bytes_per_device"]}.get(
            test, ["p50_us", "p99_us", "server_cpu_s"]
        )
        cells = []
        for key in keys:
            ratios = [float(a[key]) / float(b[key]) for a, b in zip(mine, theirs, strict=False) if b.get(key)]
            cells.append(f"{key} {statistics.median(ratios):.2f}" if ratios else f"{key} -")
        print(f"  {test:<10}{size:>6}  " + "  ".join(cells))
    slow = groups.get(("slow", 64, "asgard"), [])
    base = groups.get(("pingpong", 64, "asgard"), [])
    if slow and base:
        ratio = median(slow, "p99_us") / median(base, "p99_us")
        print(f"\nasgard fast-pair p99 with a slow consumer / without: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000, help="round trips per ping-pong run")
    parser.add_argument("--tp-count", type=int, default=100_000, help="64 B messages per one-way run")
    parser.add_argument("--idle", type=int, default=5000, help="idle devices for the memory test (0: skip)")
    parser.add_argument("--only", default=",".join(TESTS), help=f"comma list of {','.join(TESTS)}")
    args = parser.parse_args()
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wanted = set(args.only.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"relay-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    rows: list[dict[str, Any]] = []
    with out_path.open("w") as out:

        def emit(srv: Server, test: str, size: int, result: dict[str, Any]) -> None:
            relay = srv.relay_stats()
            counters = {
                k: relay[k] for k in ("delivered_by_reference", "redelivered_copies", "dropped") if k in relay
            }
            row = {"server": srv.name, "test": test, "size": size, **result, **counters}
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row), flush=True)

        for _ in range(args.rounds):
            one_round(args, wanted, emit)
    summarise(rows)
    print(f"\nJSON lines: {out_path}")


if __name__ == "__main__":
    main()
