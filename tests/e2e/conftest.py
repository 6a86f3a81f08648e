"""Fixtures of the end-to-end tests: real `asgard` processes on a store in `tmp_path`, always killed
(whole process group) and reaped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from tests.e2e.nodeproc import NodeProcess, node_env, start_node_process

Spawn = Callable[..., Awaitable[NodeProcess]]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def env(data_dir: Path) -> dict[str, str]:
    """The environment of a node (and of CLI commands) on `data_dir`."""
    return node_env(data_dir)


@pytest.fixture
async def spawn(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Spawn]:
    """`await spawn(env, config=None)` starts `asgard serve` and returns once it has announced its
    addresses."""
    started: list[NodeProcess] = []

    async def start(env: dict[str, str], name: str = "node", config: Path | None = None) -> NodeProcess:
        node = await start_node_process(nursery, env, tmp_path, name=f"{name}{len(started)}", config=config)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.kill_group()
            with trio.move_on_after(10):
                await node.process.wait()
