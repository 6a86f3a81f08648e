"""Registry fixtures: a real store in tmp_path and a Trio clock that jumps only when the writer
thread is idle (a threshold of 0 would jump while a commit is in flight on the writer thread)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from node.clock import WallClock
from node.config import RegistrySettings, StoreSettings
from node.registry import Registry
from node.storage import Storage, open_storage


@pytest.fixture
def thread_safe_autojump_clock() -> MockClock:
    return MockClock(autojump_threshold=0.02)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_storage(tmp_path / "registry.db", StoreSettings(checkpoint_interval_s=3600)) as s:
        yield s


@pytest.fixture
async def registry(storage: Storage, nursery: trio.Nursery) -> Registry:
    settings = RegistrySettings(
        heartbeat_interval_s=30,
        inactive_after_missed=3,
        offline_after_missed=10,
        last_seen_flush_interval_s=3600,
    )
    reg = Registry(storage, settings, WallClock())
    await nursery.start(reg.run)
    return reg
