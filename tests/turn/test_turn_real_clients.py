"""Real clients against the service in-process: coturn's turnutils_stunclient and
turnutils_uclient (ChannelData, Send indications with -s, TCP with -t, REST secret with -W,
client-to-client, RTCP pairs with EVEN-PORT), with turnutils_peer as the echo peer, and the
project's stdlib ping-pong anchor. Moderate load, bounded in count and time; 0 errors, 0 loss."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from .conftest import REST_SECRET, base_settings, start_turn

pytestmark = [pytest.mark.external, pytest.mark.slow]

ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "anchors"
RUN_TIMEOUT_S = 90


def _settings(**overrides: Any) -> Any:
    return base_settings(max_allocations_per_user=1000, udp_buffer_bytes=8 << 20, **overrides)


async def uclient(path: str, server: tuple[str, int], peer: tuple[str, int], *flags: str) -> dict[str, int]:
    """Run turnutils_uclient; return its totals after checking it reported no error."""
    credentials = ["-u", "test", "-W", REST_SECRET] if "-W" in flags else ["-u", "test", "-w", "secret"]
    extra = [f for f in flags if f != "-W"]
    command = [
        path, *credentials, "-p", str(server[1]), "-e", peer[0], "-r", str(peer[1]), "-X", "-g",
        "-l", "100", "-z", "2", *extra, server[0],
    ]  # fmt: skip
    with trio.fail_after(RUN_TIMEOUT_S):
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output[-2000:]
    assert not re.search(r"error|cannot|failure", output, re.IGNORECASE), output[-2000:]
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    lost = re.search(r"Total lost packets (\d+)", output)
    assert totals and lost, output[-2000:]
    sent, received = map(int, totals[-1])
    return {"sent": sent, "received": received, "lost": int(lost.group(1))}


SCENARIOS = {
    "channel-data": ("-c", "-m", "6", "-n", "200"),
    "send-indications": ("-c", "-s", "-m", "4", "-n", "200"),
    "rest-secret": ("-c", "-W", "-m", "4", "-n", "200"),
    "client-to-client": ("-c", "-y", "-m", "4", "-n", "200"),
    "rtcp-pairs-even-port": ("-m", "2", "-n", "100"),
    "large-datagrams": ("-c", "-m", "2", "-n", "100", "-l", "1200"),
}
TCP_SCENARIOS = {
    "tcp": ("-c", "-t", "-m", "4", "-n", "200"),
    "tcp-send-indications": ("-c", "-t", "-s", "-m", "2", "-n", "200"),
    "tcp-rest-secret": ("-c", "-t", "-W", "-m", "2", "-n", "200"),
}


async def _run_all(
    path: str, server: tuple[str, int], peer: tuple[str, int], scenarios: dict[str, tuple[str, ...]]
) -> dict[str, dict[str, int]]:
    results: dict[str, dict[str, int]] = {}

    async def one(name: str, flags: tuple[str, ...]) -> None:
        results[name] = await uclient(path, server, peer, *flags)

    async with trio.open_nursery() as nursery:
        for name, flags in scenarios.items():
            nursery.start_soon(one, name, flags)
    return results


def _check(results: dict[str, dict[str, int]]) -> None:
    for name, totals in results.items():
        assert totals["lost"] == 0, (name, totals)
        assert totals["sent"] == totals["received"] > 0, (name, totals)


async def test_uclient_over_udp(
    nursery: trio.Nursery, require_program: Any, turnutils_peer: tuple[str, int]
) -> None:
    path = require_program("turnutils_uclient")
    turn = await start_turn(nursery, _settings())
    _check(await _run_all(path, turn.udp, turnutils_peer, SCENARIOS))
    stats = turn.service.statistics()
    assert stats.relayed["to_peer_datagrams"] > 0 and stats.relayed["to_client_datagrams"] > 0
    assert stats.refusals.get("peer-denied", 0) == 0


async def test_uclient_over_tcp(
    nursery: trio.Nursery, require_program: Any, turnutils_peer: tuple[str, int]
) -> None:
    path = require_program("turnutils_uclient")
    turn = await start_turn(nursery, _settings())
    _check(await _run_all(path, turn.tcp, turnutils_peer, TCP_SCENARIOS))


async def test_uclient_with_the_trio_only_relay(
    nursery: trio.Nursery, require_program: Any, turnutils_peer: tuple[str, int]
) -> None:
    path = require_program("turnutils_uclient")
    turn = await start_turn(nursery, _settings(relay_thread=False))
    scenarios = {k: SCENARIOS[k] for k in ("channel-data", "send-indications", "rtcp-pairs-even-port")}
    _check(await _run_all(path, turn.udp, turnutils_peer, scenarios))


async def test_stunclient(nursery: trio.Nursery, require_program: Any) -> None:
    path = require_program("turnutils_stunclient")
    turn = await start_turn(nursery, _settings())
    with trio.fail_after(RUN_TIMEOUT_S):
        result = await trio.run_process(
            [path, "-p", str(turn.udp[1]), turn.udp[0]], capture_stdout=True, check=False
        )
    output = result.stdout.decode()
    match = re.search(r"UDP reflexive addr: ([\d.]+):(\d+)", output)
    assert result.returncode == 0 and match, output
    assert match.group(1) == "127.0.0.1" and 0 < int(match.group(2)) < 65536


@pytest.mark.parametrize("mode", ["peer", "c2c", "rest"])
async def test_pingpong_anchor(nursery: trio.Nursery, turnutils_peer: tuple[str, int], mode: str) -> None:
    script = ANCHORS / "turn_pingpong.py"
    if not script.exists():
        pytest.skip(f"{script} is not there (the shared anchors live next to the repository)")
    turn = await start_turn(nursery, _settings())
    extra = {"peer": [], "c2c": ["--c2c"], "rest": ["--secret", REST_SECRET]}[mode]
    command = [
        sys.executable, str(script), "--port", str(turn.udp[1]), "--peer-port", str(turnutils_peer[1]),
        "-n", "300", "--warmup", "20", "--size", "512", "--json", *extra,
    ]  # fmt: skip
    with trio.fail_after(RUN_TIMEOUT_S):
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert (report["n"], report["lost"], report["bad"]) == (300, 0, 0)
    assert turn.service.statistics().allocations == 0  # the anchor deletes its allocations
