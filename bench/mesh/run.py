"""Cross-node round trip (A -> B -> A) next to the same-node round trip (A -> A), in one run.

    .venv/bin/python -m bench.mesh [--rounds 3] [--count 3000] [--size 64] [--reference DIR]

Two `asgard serve --ephemeral` processes form a mesh (B lists A's mesh listener as its static
peer; cluster secret from the environment). Both cases use the relay benchmark's device client
(bench/relay/client.py, `websockets` on uvloop, one process per role): `pingpong` sends a 64 B
DIRECT frame and waits for the echo, `echo` sends every frame back. Same-node: both devices on A.
Cross-node: the pinger on A, the echoer on B, so every round trip crosses the peer link twice
(A -> B -> A). Rounds alternate same, cross, same, cross ... on the same two nodes; each case uses
fresh device ids, and the pinger starts only once A's replicated registry names B as the echoer's
home. Results: one JSON line per case and round in bench/results/mesh-*.jsonl (p50/p90/p99/p99.9/
max in µs, rate, server CPU seconds of both nodes from /proc/PID/stat, the mesh's routing
counters, and each node's CPU per round trip split by thread: the Trio thread and the others),
then a table of medians and the cross/same ratio. Target: cross-node p99 <= 2 ms.
`--reference DIR` runs a second pair of nodes from another checkout (e.g. the commit before a
change, unpacked with `git archive`; its nodes peer over the address their JSON line names:
`mesh`, or `rpc` before the mesh had its own listener) and alternates its cross-node case with
this checkout's: a change measured side by side. Loopback only; every node and client is killed
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.relay.run import (
    ASGARD_ENV,
    PY,
    RESULTS,
    ROOT,
    Server,
    _asgard,
    _stop,
    background,
    cpu_seconds,
    run_json,
)

SECRET = "bench-mesh-secret-0123456789abcdef"
MESH_ENV = {
    "ASGARD_MESH__ENABLED": "true",
    "ASGARD_MESH__CLUSTER_SECRET": SECRET,
    "ASGARD_MESH__SYNC__POLL_INTERVAL_S": "0.05",
}
WAIT_S = 30.0


@contextmanager
def node(peers: list[str], root: Path = ROOT) -> Iterator[tuple[Server, dict[str, Any]]]:
    """An ephemeral node of the checkout at `root` with the mesh on; yields (server, its announcement)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        **ASGARD_ENV,
        **MESH_ENV,
        "ASGARD_MESH__PEERS": json.dumps(peers),
    }
    proc = subprocess.Popen(
        [PY, "-m", "node", "serve", "--ephemeral"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=root,
        env=env,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        announcement = json.loads(line)
        yield _asgard(announcement), announcement
    finally:
        _stop(proc)


def api(srv: Server) -> httpx.Client:
    return httpx.Client(base_url=srv.api, headers={"Authorization": f"Bearer {srv.admin}"}, timeout=10)


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def homes(srv: Server) -> dict[str, int]:
    with api(srv) as c:
        members = c.get("/api/v1/cluster").json()["members"]
    return {m["node_id"]: m["devices"] for m in members}


def register(srv: Server, network: str, device: str) -> None:
    """Register `device` on `srv` (its home) before its session opens, so that the other node
    knows where it lives before the first frame (a device registered a moment ago elsewhere is
    unknown until the registry has replicated)."""
    body = {"device_id": device, "network_id": network, "world_type": "physical", "name": "bench"}
    with api(srv) as c:
        c.post("/api/v1/devices", json=body).raise_for_status()


def known(srv: Server, device: str) -> bool:
    with api(srv) as c:
        return c.get(f"/api/v1/devices/{device}").status_code == 200


def client(srv: Server, network: str, role: str, me: str, peer: str, **options: Any) -> list[str]:
    argv = [PY, "-m", "bench.relay.client", role, "--proto", "asgard", "--url", srv.url, "--token", srv.token]
    argv += ["--network", network, "--me", me, "--peer", peer]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    return argv


def round_trip(
    pinger: Server, echoer: Server, network: str, nodes: list[Server], args: argparse.Namespace
) -> dict[str, Any]:
    """One measured case: ping from `pinger`'s node to a device on `echoer`'s node and back."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    register(pinger, network, a)
    register(echoer, network, b)
    wait_for(lambda: all(known(n, a) and known(n, b) for n in nodes), "both devices on both nodes")
    with background(client(echoer, network, "echo", b, a, size=args.size)):
        cpu0 = [cpu_seconds(n.pid) for n in nodes]
        threads0 = [thread_cpu(n.pid) for n in nodes]
        argv = client(pinger, network, "pingpong", a, b, size=args.size, count=args.count, warmup=args.warmup)
        result = run_json(argv)
        result["server_cpu_s"] = round(sum(cpu_seconds(n.pid) for n in nodes) - sum(cpu0), 3)
        trips = args.count + args.warmup
        for name, n, before in zip("ab", nodes, threads0, strict=True):
            main, other = _split(before, thread_cpu(n.pid), n.pid)
            result[f"cpu_us_per_rt_{name}_trio"] = round(main * 1e6 / trips, 1)
            result[f"cpu_us_per_rt_{name}_other"] = round(other * 1e6 / trips, 1)
    return result


def thread_cpu(pid: int) -> dict[int, float]:
    """utime + stime of every thread of `pid`, in seconds."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _split(before: dict[int, float], after: dict[int, float], pid: int) -> tuple[float, float]:
    """CPU seconds spent meanwhile by the main (Trio) thread and by all the other threads."""
    delta = {tid: cpu - before.get(tid, 0.0) for tid, cpu in after.items()}
    main = delta.pop(pid, 0.0)
    return main, sum(delta.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reference", type=Path, help="another checkout, run side by side")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"mesh-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    roots = [ROOT] + ([args.reference.resolve()] if args.reference else [])
    cases = ["same-node", "cross-node"] + (["cross-node (reference)"] if args.reference else [])
    rows: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    with ExitStack() as stack:
        pairs = [_pair(stack, root) for root in roots]
        for n in range(args.rounds):
            for case in cases:
                a, b = pairs[max(0, cases.index(case) - 1)]
                result = round_trip(a, a if case == "same-node" else b, a.network, [a, b], args)
                with api(a) as c:
                    result["mesh_routing_a"] = c.get("/api/v1/admin/stats").json()["services"]["mesh"][
                        "routing"
                    ]
                record = {"bench": "mesh", "case": case, "round": n, "size": args.size,
                          "load1": os.getloadavg()[0], **result}  # fmt: skip
                rows[case].append(record)
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"round {n} {case:26} " + _line(result))
    table(rows, out)


def _pair(stack: ExitStack, root: Path) -> tuple[Server, Server]:
    """Two linked nodes of the checkout at `root`; B dials A and knows A's network."""
    a, a_line = stack.enter_context(node([], root))
    b, _ = stack.enter_context(node([a_line.get("mesh") or a_line["rpc"]], root))
    wait_for(lambda: len(homes(a)) >= 2, "the link between the nodes")
    network = b.network = a.network
    wait_for(lambda: api(b).get(f"/api/v1/networks/{network}").status_code == 200, "the network on B")
    return a, b


def table(rows: dict[str, list[dict[str, Any]]], out: Any) -> None:
    def med(case: str, key: str) -> float:
        return float(statistics.median(r[key] for r in rows[case] if key in r))

    print(f"\nmedians over {len(rows['same-node'])} rounds ({out}):")
    print("| case | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | rate rt/s | server CPU s "
          "| CPU µs/rt A trio + other | B trio + other |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in rows:
        rate = 1e6 / med(case, "p50_us")
        cells = [med(case, k) for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")]
        cpu = med(case, "server_cpu_s")
        threads = [med(case, f"cpu_us_per_rt_{n}_{t}") for n in "ab" for t in ("trio", "other")]
        split = f"{threads[0]:.0f} + {threads[1]:.0f} | {threads[2]:.0f} + {threads[3]:.0f}"
        figures = " | ".join(f"{v:.0f}" for v in cells)
        print(f"| {case} | {figures} | {rate:.0f} | {cpu:.2f} | {split} |")
    for case in rows:
        if case == "same-node":
            continue
        ratio = med(case, "p99_us") / med("same-node", "p99_us")
        verdict = "met" if med(case, "p99_us") <= 2000 else "NOT met"
        print(f"{case}: cross/same p99 ratio {ratio:.2f}; target cross-node p99 <= 2000 µs: {verdict}")


def _line(result: dict[str, Any]) -> str:
    p50, p99, top = (result.get(k, 0) for k in ("p50_us", "p99_us", "max_us"))
    return f"p50 {p50:8.0f} µs  p99 {p99:8.0f} µs  max {top:8.0f} µs  timeouts {result.get('timeouts')}"
