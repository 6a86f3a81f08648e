"""The lock service inside the node: SQLite journal, restart persistence, REST inspection and force-release."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from node.app import NodeHandle, ephemeral_overrides, run_node
from node.auth import Role
from node.config import StoreSettings, load_settings
from node.locks import CounterReserved, LeaseEnded, LeaseRecord, LockMode
from node.locks.sqlite_journal import SqliteLockJournal
from node.storage import open_storage


@asynccontextmanager
async def running_node(data_dir: Path) -> AsyncIterator[NodeHandle]:
    overrides = ephemeral_overrides(data_dir)
    settings = load_settings(None, environ={}, overrides=overrides).settings
    async with trio.open_nursery() as nursery:
        handle: NodeHandle = await nursery.start(
            lambda task_status: run_node(settings, handle_signals=False, task_status=task_status)
        )
        try:
            yield handle
        finally:
            handle.stop()


def client(handle: NodeHandle, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token or handle.admin_token}"}
    return httpx.AsyncClient(base_url=handle.addresses["api"], headers=headers, timeout=10)


async def test_sqlite_journal_round_trip_and_counters_never_decrease(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "j.db", StoreSettings()) as storage:
        journal = SqliteLockJournal(storage)
        lease = LeaseRecord("r", 7, "o", "s", LockMode.SHARED, 3, 30.0, 1e9)
        await journal.commit(
            [CounterReserved("r", 10), lease, LeaseRecord("r", 8, "p", "s", LockMode.SHARED, 0, 5.0, 2e9)]
        )
        await journal.commit([CounterReserved("r", 4), LeaseEnded("r", 8), LeaseEnded("r", 99)])
        snap = await journal.load()
        assert snap.counters == {"r": 10}
        assert list(snap.leases) == [lease]


async def test_tokens_keep_increasing_across_node_restarts(tmp_path: Path) -> None:
    tokens = []
    for _ in range(3):
        with trio.fail_after(20):
            async with running_node(tmp_path / "data") as handle:
                locks = handle.extra["locks"]
                lease = await locks.acquire("camera", owner="dev", session="s")
                tokens.append(lease.token)
                await locks.release("camera", lease.token, owner="dev")
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 3


async def test_held_lease_survives_restart_with_its_remaining_time(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_node(tmp_path / "data") as handle:
            lease = await handle.extra["locks"].acquire("speaker", owner="dev", session="s", lease_s=600)
        async with running_node(tmp_path / "data") as handle:
            view = await handle.extra["locks"].get("speaker")
            assert [h.token for h in view.holders] == [lease.token]
            assert view.holders[0].owner == "dev"


async def test_rest_list_get_and_admin_force_release(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_node(tmp_path / "data") as handle:
            locks = handle.extra["locks"]
            lease = await locks.acquire("door/front", owner="dev", session="s")
            async with trio.open_nursery() as nursery:
                released = trio.Event()

                async def watch() -> None:
                    async with locks.watch() as events:
                        async for ev in events:
                            if type(ev).__name__ in ("LockReleased", "LockPreempted"):
                                released.set()
                                return

                nursery.start_soon(watch)
                await trio.testing.wait_all_tasks_blocked()
                async with client(handle) as http:
                    listed = (await http.get("/api/v1/locks")).json()["items"]
                    assert [(i["resource"], i["holders"][0]["token"]) for i in listed] == [
                        ("door/front", lease.token)
                    ]
                    one = await http.get("/api/v1/locks/door/front")
                    assert one.status_code == 200
                    assert one.json()["last_token"] == lease.token
                    gone = await http.delete("/api/v1/locks/door/front")
                    assert gone.status_code == 200
                    assert [r["token"] for r in gone.json()["released"]] == [lease.token]
                    assert (await http.get("/api/v1/locks/door/front")).status_code == 404
                await released.wait()


@pytest.mark.parametrize("role", ["viewer", "service"])
async def test_force_release_is_admin_only(tmp_path: Path, role: str) -> None:
    with trio.fail_after(20):
        async with running_node(tmp_path / "data") as handle:
            await handle.extra["locks"].acquire("door", owner="dev", session="s")
            secret, _ = await handle.tokens.create(name=role, role=Role(role))
            async with client(handle, secret) as http:
                assert (await http.get("/api/v1/locks/door")).status_code == 200
                refused = await http.delete("/api/v1/locks/door")
                assert refused.status_code == 403
                assert refused.headers["content-type"] == "application/problem+json"
            assert (await handle.extra["locks"].get("door")).holders
