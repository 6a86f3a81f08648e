"""A real node on loopback (run_node in-process, store in tmp_path) with the relay, for relay tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node.app import ephemeral_overrides, run_node
from node.auth import SYSTEM
from node.config import load_settings
from tests.relay.helpers import RelayEnv

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
TEST_SETTINGS: dict[str, Any] = {
    "logging.console": False,
    "logging.file": "node.log",
    "server.shutdown_grace_s": 2.0,
}

StartRelay = Callable[..., Awaitable[RelayEnv]]


@pytest.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[StartRelay]:
    """Start a node (`await start_relay(**{"relay.queue.max_messages": 3})`); stopped after the test."""
    envs: list[RelayEnv] = []
    stop_scope = trio.CancelScope()
    with stop_scope:
        async with trio.open_nursery() as nursery:

            async def start(**overrides: Any) -> RelayEnv:
                data_dir = tmp_path / f"node{len(envs)}"
                values = ephemeral_overrides(data_dir) | TEST_SETTINGS | overrides
                settings = load_settings(None, environ={}, overrides=values).settings
                with trio.fail_after(START_TIMEOUT_S):
                    handle = await nursery.start(partial(run_node, settings, handle_signals=False))
                    net = await handle.registry.create_network(SYSTEM, "home")
                env = RelayEnv(handle, uuid.UUID(net.network_id), nursery)
                envs.append(env)
                return env

            try:
                yield start
            finally:
                stop_scope.deadline = trio.current_time() + STOP_TIMEOUT_S
                for env in envs:
                    await env.aclose()
    assert not stop_scope.cancelled_caught, f"a node did not stop within {STOP_TIMEOUT_S} s"


@pytest.fixture
async def env(start_relay: StartRelay) -> RelayEnv:
    """A node with default settings and one network."""
    return await start_relay()


@pytest.fixture
def jump_clock() -> trio.testing.MockClock:
    """Trio's clock at real speed that a test can jump forward (TTL); the node's wall clock follows."""
    return trio.testing.MockClock(rate=1.0)
