"""Locks through the node's surfaces: WebSocket device client and gRPC, next to etcd, in one run.

Run:  .venv/bin/python -m bench.node_rpc.bench_node_locks [--rounds 4] [--n 2000] [--etcd-n 300]
                                                          [--reference DIR]

A real node runs as its own process (`asgard serve`, store in a temp dir, every listener on
127.0.0.1, `locks.etcd_endpoints` pointing at an etcd started here). Paths, alternating per round
(A B C D E ...; BENCH.md):
  ws-local      DeviceClient.locks acquire + release (lock frames on the WebSocket relay)
  ws-lean-local the same frames from the relay benchmark's client library (`websockets` on
                uvloop): the node's share without the Trio client's own per-message costs
  grpc-local    LockService.Acquire (stream until GRANTED) + Release, grpclib on uvloop
  ws-cluster    the same on a cluster resource (etcd put-if-absent txn + delete behind the node)
  grpc-cluster
  etcd          etcd's own lock round trip from this process (lease grant + txn + revoke)
then 10 clients contending for one resource, per surface: grants per second.
cpu_s: the node's CPU seconds (/proc/PID/stat) during the path, plus etcd's for etcd/cluster;
node_us / client_us: CPU per acquire + release of the node alone and of this (client) process.
--reference DIR: a second node from another checkout (PYTHONPATH=DIR, e.g. a worktree of the
commit before a change) on the same etcd; the ws paths run against it too, alternating, with this
checkout's clients (`<path>@ref` rows): the node's side of a change, side by side.
Output: a table, and JSON lines in bench/results/node-locks-<time>.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import trio
import uvloop

import wire.device as wd
from bench.locks.bench_locks import EtcdRawTransport, cpu_seconds, etcd_process, summary
from node.app import ephemeral_overrides
from node.client import ClientSettings, DeviceClient
from node.locks.etcd import open_etcd_client

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
CLIENTS = 10
Path_ = Callable[[], list[float]]
Target = tuple[str, str, list[tuple[str, str]]]  # relay URL, network id, devices


@contextmanager
def node_process(etcd_url: str, root: Path | None = None) -> Iterator[dict[str, Any]]:
    """`asgard serve` on a temp store (from checkout `root` if given); yields its announcement
    (addresses, pid, admin token)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASGARD_")}
        if root is not None:
            env["PYTHONPATH"] = str(root)
        settings = ephemeral_overrides(Path(tmp)) | {
            "logging.console": False,
            "locks.etcd_endpoints": [etcd_url],
            "locks.max_wait_s": 60,
        }
        for key, value in settings.items():
            text = json.dumps(value) if isinstance(value, list | bool) else str(value)
            env["ASGARD_" + key.replace(".", "__").upper()] = text
        script = Path(sys.executable).with_name("asgard")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "node"]
        proc = subprocess.Popen(
            [*command, "serve"],
            env=env,
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("{"):
                raise RuntimeError(f"the node did not start: {line!r}")
            yield json.loads(line)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def devices(announcement: dict[str, Any], count: int) -> tuple[str, list[tuple[str, str]]]:
    """A network and `count` devices with device tokens (REST as admin)."""
    headers = {"Authorization": f"Bearer {announcement['admin_token']}"}
    with httpx.Client(base_url=announcement["api"], headers=headers, timeout=10) as http:
        network = http.post("/api/v1/networks", json={"name": "bench"}).json()["network_id"]
        out = []
        for i in range(count):
            device_id = str(uuid.uuid4())
            body = {"name": f"bench {i}", "role": "device", "device_id": device_id, "networks": [network]}
            out.append((device_id, http.post("/api/v1/tokens", json=body).json()["token"]))
    return network, out


# -- WebSocket ---------------------------------------------------------------------------------
async def ws_clients(
    relay: str,
    network: str,
    devs: list[tuple[str, str]],
    body: Callable[[list[DeviceClient]], Awaitable[Any]],
) -> Any:
    async with trio.open_nursery() as nursery:
        clients = []
        for device_id, token in devs:
            client = DeviceClient(
                relay,
                token=token,
                device_id=device_id,
                network_id=network,
                settings=ClientSettings(reconnect=False),
            )
            await nursery.start(client.run)
            clients.append(client)
        try:
            return await body(clients)
        finally:
            for client in clients:
                await client.aclose()


async def ws_round_trips(clients: list[DeviceClient], n: int, resource: str) -> list[float]:
    locks = clients[0].locks
    for _ in range(20):  # warm
        await locks.release(resource, (await locks.acquire(resource)).token)
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        lease = await locks.acquire(resource)
        await locks.release(resource, lease.token)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


async def ws_contended(clients: list[DeviceClient], seconds: float, resource: str) -> tuple[int, float]:
    grants = 0
    start = time.perf_counter()

    async def worker(client: DeviceClient) -> None:
        nonlocal grants
        while time.perf_counter() - start < seconds:
            lease = await client.locks.acquire(resource, wait_s=30)
            grants += 1
            await client.locks.release(resource, lease.token)

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(worker, client)
    return grants, time.perf_counter() - start


# -- WebSocket, lean client (the relay benchmark's: `websockets` on uvloop) -------------------
def ws_raw(relay: str, network: str, device: tuple[str, str], n: int, resource: str) -> list[float]:
    """Acquire + release round trips from a `websockets` client on uvloop speaking the lock
    frames directly: the node's share of the latency, without the Trio client's own costs."""
    import websockets.asyncio.client as wsc

    me = uuid.UUID(device[0])

    async def frame_from(ws: Any) -> wd.FrameView:
        data = await ws.recv()
        if not isinstance(data, bytes):
            raise RuntimeError("the node sent a text message")
        return wd.decode_frame_untrusted(data, max_payload=0)

    async def main() -> list[float]:
        headers = {"Authorization": f"Bearer {device[1]}"}
        async with wsc.connect(relay, additional_headers=headers, compression=None) as ws:
            await ws.recv()  # WELCOME
            net = uuid.UUID(network)
            register = wd.Register(device_id=me, network_id=net, name="bench", world_type="physical")
            await ws.send(wd.encode_control(register, message_id=1, source=me))
            if (await frame_from(ws)).type != wd.FrameType.REGISTERED:
                raise RuntimeError("REGISTER refused")
            ids = iter(range(2, 1 << 62))

            async def ask(message: wd.ControlMessage, answer: type[wd.ControlMessage]) -> Any:
                await ws.send(wd.encode_control(message, message_id=next(ids), source=me))
                got = wd.decode_lock_untrusted(await frame_from(ws))
                if not isinstance(got, answer):
                    raise RuntimeError(f"{type(message).__name__}: got {got}")
                return got

            async def trip() -> None:
                granted = await ask(wd.LockAcquire(resource=resource), wd.LockGranted)
                await ask(wd.LockRelease(resource=resource, token=granted.token), wd.LockReleased)

            for _ in range(20):  # warm
                await trip()
            out = []
            for _ in range(n):
                start = time.perf_counter_ns()
                await trip()
                out.append((time.perf_counter_ns() - start) / 1000)
            return out

    return uvloop.run(main())


# -- gRPC (grpclib + betterproto2 on uvloop, like bench/rpc) -----------------------------------
def grpc_run(target: str, token: str, body: Callable[[Any], Awaitable[Any]]) -> Any:
    from grpclib.client import Channel

    from protos.gen.asgard import v1 as pb

    async def main() -> Any:
        host, port = target.rsplit(":", 1)
        channel = Channel(host, int(port))
        try:
            stub = pb.LockServiceStub(channel, timeout=60, metadata={"authorization": f"Bearer {token}"})
            return await body(stub)
        finally:
            channel.close()

    return uvloop.run(main())


async def grpc_acquire(stub: Any, resource: str, holder: str = "") -> int:
    from protos.gen.asgard import v1 as pb

    request = pb.AcquireRequest(resource=resource, holder=holder, wait_timeout_ms=30_000)
    async for event in stub.acquire(request):
        if event.state == pb.AcquireState.GRANTED:
            return int(event.lease.fencing_token)
        if event.state != pb.AcquireState.QUEUED:
            raise RuntimeError(f"acquire {resource}: {event}")
    raise RuntimeError("the acquire stream ended without a grant")


async def grpc_release(stub: Any, resource: str, token: int) -> None:
    from protos.gen.asgard import v1 as pb

    answer = await stub.release(pb.ReleaseRequest(resource=resource, fencing_token=token))
    assert answer.released


def grpc_round_trips(n: int, resource: str) -> Callable[[Any], Awaitable[list[float]]]:
    async def body(stub: Any) -> list[float]:
        for _ in range(20):
            await grpc_release(stub, resource, await grpc_acquire(stub, resource))
        out = []
        for _ in range(n):
            start = time.perf_counter_ns()
            token = await grpc_acquire(stub, resource)
            await grpc_release(stub, resource, token)
            out.append((time.perf_counter_ns() - start) / 1000)
        return out

    return body


def grpc_contended(seconds: float, resource: str) -> Callable[[Any], Awaitable[tuple[int, float]]]:
    async def body(stub: Any) -> tuple[int, float]:
        grants = 0
        start = time.perf_counter()

        async def worker(i: int) -> None:
            nonlocal grants
            while time.perf_counter() - start < seconds:
                token = await grpc_acquire(stub, resource, holder=f"c{i}")
                grants += 1
                await grpc_release(stub, resource, token)

        await asyncio.gather(*(worker(i) for i in range(CLIENTS)))
        return grants, time.perf_counter() - start

    return body


# -- the run -----------------------------------------------------------------------------------
def measured(pids: list[int], fn: Callable[[], Any]) -> tuple[Any, float, list[float], float]:
    """fn's result, wall seconds, CPU seconds of each pid and of this process during it."""
    before = [cpu_seconds(p) for p in pids]
    own = time.process_time()
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
    return result, elapsed, used, time.process_time() - own


def main(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()

    async def etcd_trips(url: str, n: int) -> list[float]:
        async with open_etcd_client([url]) as raw_client:
            raw = EtcdRawTransport(raw_client)
            await raw.release("bench", await raw.acquire("bench"))
            out = []
            for _ in range(n):
                start = time.perf_counter_ns()
                await raw.release("bench", await raw.acquire("bench"))
                out.append((time.perf_counter_ns() - start) / 1000)
            return out

    with ExitStack() as stack:
        url, etcd_pid = stack.enter_context(etcd_process())
        node = stack.enter_context(node_process(url))
        ref = stack.enter_context(node_process(url, args.reference)) if args.reference else None
        network, devs = devices(node, CLIENTS)
        admin, relay, rpc, pid = node["admin_token"], node["relay"], node["rpc"], node["pid"]
        at: Target = (relay, network, devs)
        samples: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        wall: dict[str, float] = {}

        def ws(at: Target, resource: str, n: int) -> Path_:
            return lambda: trio.run(
                ws_clients, at[0], at[1], at[2][:1], lambda c: ws_round_trips(c, n, resource)
            )

        def ws_lean(at: Target, resource: str, n: int) -> Path_:
            return lambda: ws_raw(at[0], at[1], at[2][1], n, resource)

        def grpc(resource: str, n: int) -> Path_:
            return lambda: grpc_run(rpc, admin, grpc_round_trips(n, resource))

        paths: list[tuple[str, list[int], Path_]] = [
            ("ws-local", [pid], ws(at, "bench/ws", args.n)),
            ("ws-lean-local", [pid], ws_lean(at, "bench/ws-lean", args.n)),
            ("grpc-local", [pid], grpc("bench/grpc", args.n)),
            ("ws-cluster", [pid, etcd_pid], ws(at, "cluster/ws", args.etcd_n)),
            (
                "ws-lean-cluster",
                [pid, etcd_pid],
                ws_lean(at, "cluster/ws-lean", args.etcd_n),
            ),
            ("grpc-cluster", [pid, etcd_pid], grpc("cluster/grpc", args.etcd_n)),
            ("etcd", [etcd_pid], lambda: trio.run(etcd_trips, url, args.etcd_n)),
        ]
        if ref is not None:  # each reference path right after its own, so they alternate closely
            r_at: Target = (ref["relay"], *devices(ref, 2))
            r_pid = ref["pid"]
            refs = {
                "ws-local": ([r_pid], ws(r_at, "bench/ws", args.n)),
                "ws-lean-local": ([r_pid], ws_lean(r_at, "bench/ws-lean", args.n)),
                "ws-cluster": ([r_pid, etcd_pid], ws(r_at, "cluster/ws-r", args.etcd_n)),
                "ws-lean-cluster": ([r_pid, etcd_pid], ws_lean(r_at, "cluster/ws-lean-r", args.etcd_n)),
            }
            mixed = []
            for path in paths:
                mixed.append(path)
                if path[0] in refs:
                    mixed.append((path[0] + "@ref", *refs[path[0]]))
            paths = mixed
        for _ in range(args.rounds):
            for name, pids, fn in paths:
                values, elapsed, used, own = measured(pids, fn)
                samples.setdefault(name, []).extend(values)
                wall[name] = wall.get(name, 0.0) + elapsed
                totals = cpu.setdefault(name, [0.0, 0.0, 0.0])
                totals[0] += sum(used)
                totals[1] += used[0] if name != "etcd" else 0.0
                totals[2] += own
        for name, values in samples.items():
            rate = len(values) / (sum(values) / 1e6)
            total, node_s, own_s = cpu[name]
            ops = len(values) + 20 * args.rounds  # each run warms up with 20 round trips
            rows.append({"path": name, "kind": "acquire+release", **summary(values), "rate_per_s": rate,
                         "cpu_s": total, "cpu_share": total / wall[name], "node_cpu_us": 1e6 * node_s / ops,
                         "client_cpu_us": 1e6 * own_s / ops})  # fmt: skip

        def ws_hot(resource: str) -> Callable[[], tuple[int, float]]:
            return lambda: trio.run(
                ws_clients, relay, network, devs, lambda c: ws_contended(c, args.contended_s, resource)
            )

        def grpc_hot(resource: str) -> Callable[[], tuple[int, float]]:
            return lambda: grpc_run(rpc, admin, grpc_contended(args.contended_s, resource))

        contenders = [
            ("ws-local", ws_hot("bench/hot-ws")),
            ("grpc-local", grpc_hot("bench/hot-grpc")),
            ("ws-cluster", ws_hot("cluster/hot-ws")),
            ("grpc-cluster", grpc_hot("cluster/hot-grpc")),
        ]
        for name, run in contenders:
            grants, elapsed = run()
            rows.append(
                {
                    "path": name,
                    "kind": f"contended-{CLIENTS}",
                    "grants": grants,
                    "rate_per_s": grants / elapsed,
                }
            )
    report(rows, load_before, os.getloadavg())


def report(rows: list[dict[str, Any]], load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"node-locks-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    with out.open("w") as fh:
        for row in rows:
            fh.write(json.dumps({"bench": "node-locks", "loadavg": [load_before, load_after], **row}) + "\n")
    head = (
        "path",
        "kind",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "rate/s",
        "cpu_s",
        "share",
        "node_us",
        "cli_us",
    )
    print("{:19} {:16} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6} {:>5} {:>7} {:>6}".format(*head))
    for r in rows:
        if r["kind"] == "acquire+release":
            cells = [r[k] for k in ("p50", "p90", "p99", "p99.9", "max", "rate_per_s")]
            line = "{:7.0f} {:7.0f} {:7.0f} {:7.0f} {:8.0f} {:8.0f}".format(*cells)
            cpu = f"{r['cpu_s']:6.2f} {r['cpu_share']:5.2f} {r['node_cpu_us']:7.0f} {r['client_cpu_us']:6.0f}"
            print(f"{r['path']:19} {r['kind']:16} {line} {cpu}")
        else:
            print(f"{r['path']:19} {r['kind']:16} {'':>48} {r['rate_per_s']:8.0f}")
    by = {(r["path"], r["kind"]): r for r in rows}
    etcd = by[("etcd", "acquire+release")]
    for name in ("ws-cluster", "ws-lean-cluster", "grpc-cluster", "ws-cluster@ref", "ws-lean-cluster@ref"):
        cluster = by.get((name, "acquire+release"))
        if cluster is not None:
            p50, p99 = cluster["p50"] / etcd["p50"], cluster["p99"] / etcd["p99"]
            print(f"{name}/etcd p50 {p50:.2f} p99 {p99:.2f} (target <= 1.2)")
    print(f"load average before {load_before}, after {load_after}")
    print(f"results: {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--etcd-n", type=int, default=300)
    parser.add_argument("--contended-s", type=float, default=3.0)
    parser.add_argument("--reference", type=Path, help="another checkout: its node runs side by side")
    main(parser.parse_args())
