"""Lock benchmark: Asgard's lock service next to etcd's own acquire+release, in one run.

Run:  .venv/bin/python -m bench.locks.bench_locks [--rounds 4] [--local-n 5000] [--etcd-n 500]

Paths measured, alternating A B A B ... in one invocation (BENCH.md):
  local     LockService.acquire + release on one resource, in process (memory journal)
  etcd      etcd's own lock round trip through its JSON gateway: lease grant + put-if-absent
            txn + lease revoke (the same gateway client machinery as the node uses)
  cluster   LockService on a cluster-wide resource (etcd-backed): put-if-absent txn + delete
  contended 10 clients contending for one resource: grants per second (local and cluster)
Another transport (WebSocket, gRPC) plugs in as a `Transport`: an object with `name`,
`async acquire(resource) -> token` and `async release(resource, token)`.
cpu_s is the server side's CPU seconds from /proc/PID/stat (local: this process; etcd and cluster:
etcd + this process); share = cpu_s / wall time of that path (on a quiet machine, local ~1.0 —
much less means the machine was busy and the tail shows the kernel's scheduling, not the locks).
Output: a table, and JSON lines in bench/results/locks-<time>.jsonl. Everything runs on
127.0.0.1; etcd is started here (temp data dir, loopback ports) and killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import trio

from node.locks import LockSettings
from node.locks.etcd import EtcdClient, open_etcd_client
from node.locks.journal import MemoryLockJournal
from node.locks.service import LockService, open_lock_service

RESULTS = Path(__file__).resolve().parents[1] / "results"
TICKS = os.sysconf("SC_CLK_TCK")


class Transport(Protocol):
    name: str

    async def acquire(self, resource: str) -> int: ...

    async def release(self, resource: str, token: int) -> None: ...


@dataclass
class ServiceTransport:
    """LockService called in process (local or cluster resources)."""

    name: str
    locks: LockService
    owner: str = "bench"

    async def acquire(self, resource: str) -> int:
        lease = await self.locks.acquire(resource, owner=self.owner, session=self.owner, wait_s=30)
        return lease.token

    async def release(self, resource: str, token: int) -> None:
        await self.locks.release(resource, token, owner=self.owner)


@dataclass
class EtcdRawTransport:
    """etcd's own lock round trip: lease grant + put-if-absent txn + revoke."""

    client: EtcdClient
    name: str = "etcd"
    lease_id: int = 0

    async def acquire(self, resource: str) -> int:
        self.lease_id, _ = await self.client.lease_grant(10)
        key = b"/bench/raw/" + resource.encode()
        created, revision, _ = await self.client.put_if_absent(key, b"x", self.lease_id, key)
        if not created:
            raise RuntimeError("raw etcd lock taken")
        return revision

    async def release(self, resource: str, token: int) -> None:
        await self.client.lease_revoke(self.lease_id)


def cpu_seconds(pid: int | None = None) -> float:
    """utime + stime of a process from /proc/PID/stat (self when pid is None)."""
    stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def summary(samples_us: list[float]) -> dict[str, float]:
    s = sorted(samples_us)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p / 100 * len(s)))]

    return {
        "n": len(s),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p99.9": pct(99.9),
        "max": s[-1],
    }


async def round_trips(t: Transport, n: int, resource: str) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        token = await t.acquire(resource)
        await t.release(resource, token)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


async def contended(
    make: Callable[[str], Transport], clients: int, seconds: float, resource: str
) -> tuple[int, float]:
    grants = 0
    start = time.perf_counter()

    async def worker(i: int) -> None:
        nonlocal grants
        t = make(f"c{i}")
        while time.perf_counter() - start < seconds:
            token = await t.acquire(resource)
            grants += 1
            await t.release(resource, token)

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(worker, i)
    return grants, time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def etcd_process() -> Iterator[tuple[str, int]]:
    """A single-member etcd on loopback ports (temp data dir) for the whole run: (url, pid)."""
    binary = shutil.which("etcd")
    if binary is None:
        raise SystemExit("etcd is not installed (scripts/install-system-deps)")
    client_port, peer_port = _free_port(), _free_port()
    url, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--name", "b", "--data-dir", f"{tmp}/data", "--listen-client-urls", url,
             "--advertise-client-urls", url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"b={peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 15
            while True:
                with suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=1).json().get("health") == "true":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("etcd did not become healthy")
                time.sleep(0.05)
            yield url, proc.pid
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@asynccontextmanager
async def run_etcd() -> AsyncIterator[tuple[str, int]]:
    """`etcd_process` from Trio (started and stopped on a worker thread)."""
    started = etcd_process()
    running = await trio.to_thread.run_sync(started.__enter__)
    try:
        yield running
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(started.__exit__, None, None, None)


async def main(args: argparse.Namespace) -> None:
    rows: list[dict[str, object]] = []
    async with run_etcd() as (url, etcd_pid):
        settings = LockSettings(etcd_endpoints=(url,), etcd_lease_ttl_s=10)
        async with (
            open_lock_service(settings, MemoryLockJournal()) as locks,
            open_etcd_client([url]) as raw_client,
        ):
            local = ServiceTransport("local", locks)
            cluster = ServiceTransport("cluster", locks)
            raw = EtcdRawTransport(raw_client)
            await round_trips(local, 200, "bench/local")  # warm-up
            await round_trips(cluster, 20, "cluster/bench")
            await round_trips(raw, 20, "bench")
            samples: dict[str, list[float]] = {"local": [], "etcd": [], "cluster": []}
            cpu: dict[str, float] = {"local": 0.0, "etcd": 0.0, "cluster": 0.0}
            wall: dict[str, float] = {"local": 0.0, "etcd": 0.0, "cluster": 0.0}
            for _ in range(args.rounds):  # A B C A B C ...
                for name, t, n, resource, pid in (
                    ("local", local, args.local_n, "bench/local", None),
                    ("etcd", raw, args.etcd_n, "bench", etcd_pid),
                    ("cluster", cluster, args.etcd_n, "cluster/bench", etcd_pid),
                ):
                    before = cpu_seconds(pid) + (cpu_seconds() if pid else 0)
                    started = time.perf_counter()
                    samples[name] += await round_trips(t, n, resource)
                    wall[name] += time.perf_counter() - started
                    cpu[name] += cpu_seconds(pid) + (cpu_seconds() if pid else 0) - before
            for name, values in samples.items():
                stats = summary(values)
                rate = len(values) / (sum(values) / 1e6)
                rows.append(
                    {
                        "path": name,
                        "kind": "acquire+release",
                        **stats,
                        "rate_per_s": rate,
                        "cpu_s": cpu[name],
                        "cpu_share": cpu[name] / wall[name],
                    }
                )
            for name, make, resource in (
                ("local", lambda o: ServiceTransport("local", locks, o), "bench/hot"),
                ("cluster", lambda o: ServiceTransport("cluster", locks, o), "cluster/hot"),
            ):
                grants, elapsed = await contended(make, 10, args.contended_s, resource)
                rows.append(
                    {"path": name, "kind": "contended-10", "grants": grants, "rate_per_s": grants / elapsed}
                )
    report(rows)


def report(rows: list[dict[str, object]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"locks-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    with out.open("w") as fh:
        for row in rows:
            fh.write(json.dumps({"bench": "locks", **row}) + "\n")
    print(
        f"{'path':10} {'kind':16} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>9}"
        f" {'rate/s':>9} {'cpu_s':>7}"
    )
    for r in rows:
        if r["kind"] == "acquire+release":
            print(
                f"{r['path']!s:10} {r['kind']!s:16} {r['p50']:8.0f} {r['p90']:8.0f} "
                f"{r['p99']:8.0f} {r['p99.9']:8.0f} {r['max']:9.0f} {r['rate_per_s']:9.0f} "
                f"{r['cpu_s']:7.2f} {r['cpu_share']:6.2f}"
            )
        else:
            print(f"{r['path']!s:10} {r['kind']!s:16} {'':>44} {r['rate_per_s']:9.0f}")
    by = {(r["path"], r["kind"]): r for r in rows}
    etcd, cluster = by[("etcd", "acquire+release")], by[("cluster", "acquire+release")]
    for q in ("p50", "p99"):
        ratio = _num(cluster[q]) / _num(etcd[q])
        print(f"cluster/etcd {q} ratio {ratio:.2f} (target <= 1.2)")
    print(f"results: {out}")


def _num(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-n", type=int, default=5000)
    parser.add_argument("--etcd-n", type=int, default=400)
    parser.add_argument("--contended-s", type=float, default=3.0)
    trio.run(main, parser.parse_args())
