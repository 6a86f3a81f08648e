"""Starting and stopping the whole node (run_node: API, relay, gRPC island, locks, TURN) twenty times
in one test leaves no thread, socket or Trio task behind."""

from __future__ import annotations

import os
import threading
from functools import partial
from pathlib import Path

import trio

from node.app import NodeHandle, ephemeral_overrides, run_node
from node.config import load_settings
from tests.relay.conftest import TEST_SETTINGS

CYCLES = 20
CYCLE_TIMEOUT_S = 20.0


def threads() -> list[str]:
    """Live threads, without Trio's idle worker cache (its threads outlive a to_thread call)."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("Trio thread"))


def sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # the listing's own descriptor
            continue
    return count


def tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


async def start_and_stop(tmp_path: Path, cycle: int) -> None:
    values = ephemeral_overrides(tmp_path / f"node{cycle}") | TEST_SETTINGS
    settings = load_settings(None, environ={}, overrides=values).settings
    with trio.fail_after(CYCLE_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            handle: NodeHandle = await nursery.start(partial(run_node, settings, handle_signals=False))
            assert {"api", "relay", "rpc"} <= set(handle.addresses)
            assert threading.active_count() > 1
            handle.stop()


async def test_twenty_start_stop_cycles_leave_nothing_behind(tmp_path: Path) -> None:
    await start_and_stop(tmp_path, -1)  # warm-up: imports, lazily created process-wide objects
    before = (threads(), sockets(), tasks())
    for cycle in range(CYCLES):
        await start_and_stop(tmp_path, cycle)
        assert (threads(), sockets(), tasks()) == before, f"after cycle {cycle}"


async def test_a_node_cancelled_from_outside_still_stops_its_grpc_thread(tmp_path: Path) -> None:
    values = ephemeral_overrides(tmp_path / "node") | TEST_SETTINGS
    settings = load_settings(None, environ={}, overrides=values).settings
    with trio.fail_after(CYCLE_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_node, settings, handle_signals=False))
            assert "asgard-rpc" in threads()
            nursery.cancel_scope.cancel()  # no graceful stop: the root scope is cancelled
    assert "asgard-rpc" not in threads()  # joined before run_node returned
