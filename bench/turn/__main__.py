"""Asgard TURN vs coturn, alternating in one invocation (BENCH.md).

Runs ../shared/anchors/coturn-baseline.sh once against coturn (the script starts it) and once
against Asgard's TURN service (started here as `python -m node.turn`, loopback only), A B A B...:
  * "pp": turn_pingpong.py ChannelData round trips, 64 B and 4 KiB (also c2c and the plain UDP floor),
  * "flood": turnutils_uclient, 10 sessions, 100k ChannelData messages through an echo peer.
Prints p50/p90/p99/p99.9/max per server with ratios, server CPU per 100k relayed datagrams and
flood loss, attributed: datagrams the kernel dropped at the server's, the echo peer's and the load
client's sockets (bench/turn/_drops.py), and those the server dropped itself (its statistics);
writes JSON lines to bench/results/.

    python -m bench.turn [--rounds 2] [--anchors ../shared/anchors] [--total 100000]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.turn._drops import DropSampler

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
TARGETS = {"p50": 1.5, "p99": 2.0, "cpu": 3.0}
SCRIPT_TIMEOUT_S = 900


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (and the next one, for coturn's alt port)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                for candidate in (port, port + 1):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


def start_asgard(port: int) -> subprocess.Popen[bytes]:
    """The service as a standalone process, set up the way the baseline script expects."""
    command = [
        sys.executable, "-m", "node.turn", "--host", "127.0.0.1", "--port", str(port),
        "--relay-ipv4", "127.0.0.1", "--realm", "asgard.test", "--user", "test:secret",
        "--rest-secret", "s3cr3t-rest", "--allow-loopback-peers",
        "--set", "max_allocations_per_user=100000", "--set", "max_allocations_total=100000",
    ]  # fmt: skip
    # Same session as the baseline script (no setsid): with autogroup scheduling a new session is
    # a scheduling group of its own, which would treat the two servers differently.
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("listening"):
        stop(proc)
        raise RuntimeError(f"asgard TURN did not start: {line!r}")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server (one process, no children) by its pid."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def stop_with_stats(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Stop the server and return the statistics it prints on the way out ({} if none)."""
    stop(proc)
    assert proc.stdout is not None
    for line in proc.stdout.read().decode(errors="replace").splitlines():
        if line.startswith("stats "):
            return dict(json.loads(line[6:]))
    return {}


def run_baseline(anchors: Path, port: int, total: int, external_pid: int | None) -> str:
    command = [
        "bash", str(anchors / "coturn-baseline.sh"), str(port), "--scenarios", "pp flood", "--clients", "10",
        "--reps", "1", "--total", str(total), "--peer-port", str(free_port()),
    ]  # fmt: skip
    if external_pid is not None:
        command += ["--external", "--server-pid", str(external_pid)]
    done = subprocess.run(command, capture_output=True, timeout=SCRIPT_TIMEOUT_S, check=False)
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def parse(output: str) -> list[dict[str, Any]]:
    """The script's pp lines and flood rows as records."""
    records: list[dict[str, Any]] = []
    for line in output.splitlines():
        if line.startswith("pp rep="):
            fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
            mode = line.split()[2]
            record = {"scenario": f"pp-{mode}", "size": int(fields["size"]), "n": int(fields["n"]),
                      "lost": int(fields["lost"])}  # fmt: skip
            for key in ("p50", "p90", "p99", "p99.9", "max", "mean"):
                record[key.replace(".", "")] = float(fields[key].rstrip("us"))
            cpu = fields.get("srv_cpu", "-").rstrip("s")
            record["srv_cpu_s"] = float(cpu) if cpu not in ("", "-") else None
            if record["srv_cpu_s"] is not None and mode != "direct-udp":
                relayed = 2 * (record["n"] + 500) * (2 if mode == "turn-c2c" else 1)  # incl. warm-up
                record["cpu_s_per_100k"] = record["srv_cpu_s"] * 100_000 / relayed
            records.append(record)
        elif line.startswith("flood"):
            cols = line.split()
            sent, recv, cpu = int(cols[4]), int(cols[5]), cols[13]
            record = {"scenario": "flood", "clients": int(cols[1]), "sent": sent, "received": recv,
                      "loss_pct": float(cols[6]), "srv_cpu_s": float(cpu) if cpu != "-" else None,
                      "rcvbuf_errors": int(cols[16])}  # fmt: skip
            if record["srv_cpu_s"] is not None and sent + recv:
                record["cpu_s_per_100k"] = record["srv_cpu_s"] * 100_000 / (sent + recv)
            records.append(record)
    return records


def _brief(records: list[dict[str, Any]]) -> str:
    parts = []
    for r in records:
        if r["scenario"] == "pp-turn-peer":
            parts.append(f"pp{r['size']} p50={r['p50']:.0f} p99={r['p99']:.0f}us")
        elif r["scenario"] == "flood":
            parts.append(
                f"flood loss={r['loss_pct']:.2f}% cpu/100k={r.get('cpu_s_per_100k', float('nan')):.2f}s"
                f" kernel drops {r.get('kernel_drops')} server drops {r.get('node_drops')}"
            )
    return ", ".join(parts)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(rows: list[dict[str, Any]]) -> list[str]:
    lines = []

    def pick(server: str, scenario: str, size: int | None, key: str) -> float:
        return median([
            r[key] for r in rows
            if r["server"] == server and r["scenario"] == scenario and (size is None or r.get("size") == size)
            and r.get(key) is not None
        ])  # fmt: skip

    header = f"{'metric':<34}{'asgard':>12}{'coturn':>12}{'ratio':>9}  target"
    lines.append(header)
    lines.append("-" * len(header))
    for scenario, size in (
        ("pp-turn-peer", 64),
        ("pp-turn-peer", 4096),
        ("pp-turn-c2c", 64),
        ("pp-direct-udp", 64),
    ):
        for key in ("p50", "p90", "p99", "p999", "max"):
            a, c = pick("asgard", scenario, size, key), pick("coturn", scenario, size, key)
            target = TARGETS.get(key) if scenario == "pp-turn-peer" else None
            verdict = "" if target is None else (f"<= {target}x " + ("ok" if a / c <= target else "MISSED"))
            label = f"{scenario} {size} B {key} us"
            lines.append(f"{label:<34}{a:>12.1f}{c:>12.1f}{a / c:>9.2f}  {verdict}")
    a, c = pick("asgard", "flood", None, "cpu_s_per_100k"), pick("coturn", "flood", None, "cpu_s_per_100k")
    verdict = f"<= {TARGETS['cpu']}x " + ("ok" if a / c <= TARGETS["cpu"] else "MISSED")
    lines.append(f"{'flood CPU s / 100k relayed dgrams':<34}{a:>12.2f}{c:>12.2f}{a / c:>9.2f}  {verdict}")
    a, c = (
        pick("asgard", "pp-turn-peer", 64, "cpu_s_per_100k"),
        pick("coturn", "pp-turn-peer", 64, "cpu_s_per_100k"),
    )
    lines.append(f"{'pp 64 B CPU s / 100k relayed dgrams':<34}{a:>12.2f}{c:>12.2f}{a / c:>9.2f}")
    a, c = pick("asgard", "flood", None, "loss_pct"), pick("coturn", "flood", None, "loss_pct")
    lines.append(
        f"{'flood 10 sessions loss %':<34}{a:>12.3f}{c:>12.3f}{'':>9}  0 " + ("ok" if a == 0 else "MISSED")
    )
    for role in ("server", "peer", "client"):
        a, c = (pick(s, "flood", None, f"kernel_drops_{role}") for s in ("asgard", "coturn"))
        lines.append(f"{'  of which dropped by ' + role + ' sockets':<34}{a:>12.0f}{c:>12.0f}")
    a = pick("asgard", "flood", None, "node_drops_total")
    lines.append(f"{'  dropped inside the server':<34}{a:>12.0f}{'n/a':>12}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--anchors", type=Path, default=REPO.parent / "shared" / "anchors")
    parser.add_argument("--total", type=int, default=100_000, help="flood messages (split over 10 sessions)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"turn-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    rows: list[dict[str, Any]] = []
    with out_path.open("w") as out:
        for round_no in range(1, args.rounds + 1):
            for server in ("coturn", "asgard"):
                port = free_port()
                proc = start_asgard(port) if server == "asgard" else None
                sampler = DropSampler(proc.pid if proc else None)
                sampler.start()
                node_stats: dict[str, Any] = {}
                try:
                    output = run_baseline(args.anchors, port, args.total, proc.pid if proc else None)
                finally:
                    kernel_drops = sampler.stop()
                    if proc is not None:
                        node_stats = stop_with_stats(proc)
                records = parse(output)
                if not records:
                    print(output, file=sys.stderr)
                    raise RuntimeError(f"no results from the {server} run")
                for record in records:
                    if record["scenario"] == "flood":
                        record["kernel_drops"] = kernel_drops
                        for role, count in kernel_drops.items():
                            record[f"kernel_drops_{role}"] = count
                        if node_stats:
                            record["node_drops"] = node_stats.get("drops", {})
                            record["node_drops_total"] = sum(record["node_drops"].values())
                load = Path("/proc/loadavg").read_text().split()[0]
                for record in records:
                    record.update(server=server, round=round_no, at=time.time(), loadavg=float(load))
                    out.write(json.dumps(record) + "\n")
                    rows.append(record)
                print(f"round {round_no} {server}: {_brief(records)} (load {load})", flush=True)
    print()
    print("medians over the rounds; CPU per relayed datagram: flood = srv CPU / (sent + received),")
    print("pp = srv CPU / (2 x round trips incl. 500 warm-up); ratio = asgard / coturn")
    print("\n".join(summarize(rows)))
    print(f"\nJSON lines: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
