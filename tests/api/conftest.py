"""A real node on loopback, started in-process with `run_node`, and httpx clients for it.

Every node gets its own store in `tmp_path`, listens on 127.0.0.1 with a free port, writes its JSON log
to `<data_dir>/node.log` (so tests can grep it for secrets) and is stopped gracefully after the test,
with a deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from node.app import ephemeral_overrides, run_node
from node.config import load_settings
from tests.api.helpers import LOG_FILE, LiveNode, StartNode

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0

# Defaults for test nodes: a log file to grep, no console noise, a short drain on stop.
TEST_SETTINGS: dict[str, Any] = {
    "logging.console": False,
    "logging.file": LOG_FILE,
    "logging.level": "DEBUG",
    "server.shutdown_grace_s": 2.0,
}


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    """Start nodes (`await start_node(**{"api.page_size_max": 10})`); all stop after the test."""
    nodes: list[LiveNode] = []
    stop_scope = trio.CancelScope()
    with stop_scope:
        async with trio.open_nursery() as nursery:

            async def start(**overrides: Any) -> LiveNode:
                data_dir = tmp_path / f"node{len(nodes)}"
                values = ephemeral_overrides(data_dir) | TEST_SETTINGS | overrides
                settings = load_settings(None, environ={}, overrides=values).settings
                with trio.fail_after(START_TIMEOUT_S):
                    handle = await nursery.start(partial(run_node, settings, handle_signals=False))
                live = LiveNode(handle, data_dir)
                nodes.append(live)
                return live

            try:
                yield start
            finally:
                stop_scope.deadline = trio.current_time() + STOP_TIMEOUT_S
                for live in nodes:
                    await live.aclose()
    assert not stop_scope.cancelled_caught, f"a node did not stop within {STOP_TIMEOUT_S} s"


@pytest.fixture
async def node(start_node: StartNode) -> LiveNode:
    """One node with default settings."""
    return await start_node()


@pytest.fixture
def admin(node: LiveNode) -> httpx.AsyncClient:
    return node.admin()


@pytest.fixture
def jump_clock() -> trio.testing.MockClock:
    """Trio's clock running at real speed that a test can also jump forward (token expiry, refills).

    The node's wall clock is derived from Trio's, so a jump moves the node's notion of "now" too.
    """
    return trio.testing.MockClock(rate=1.0)
