"""kill -9 of the node during a stream of POSTs loses no write that had returned 201."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from store import integrity_ok, open_db
from tests.e2e.conftest import Spawn
from tests.e2e.streams import DeviceStream, create_network, stored_device_ids

WRITERS = 8
KILL_AFTER_ACKS = 400
STREAM_TIMEOUT_S = 60


@pytest.mark.slow
async def test_sigkill_mid_stream_loses_no_acknowledged_write(
    spawn: Spawn, env: dict[str, str], data_dir: Path
) -> None:
    node = await spawn(env)
    token = node.announcement["admin_token"]
    stream = DeviceStream(node.url, token, await create_network(node.url, token), target=KILL_AFTER_ACKS)

    with trio.fail_after(STREAM_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(WRITERS):
                nursery.start_soon(stream.write)
            await stream.reached.wait()
            node.kill_group()  # SIGKILL while every writer is mid-request
            assert await node.process.wait() == -9
    assert stream.unexpected == []
    assert stream.unanswered >= 1, "the kill should have caught requests in flight"
    acked = set(stream.acked)
    assert len(acked) >= KILL_AFTER_ACKS

    db = data_dir / "asgard.db"
    conn = open_db(db)  # what a restart opens: the WAL is replayed
    try:
        assert integrity_ok(conn) == (True, "ok")
    finally:
        conn.close()

    again = await spawn(env, name="restarted")
    assert "admin_token" not in again.announcement  # printed on the first start only
    stored = await stored_device_ids(again.url, token)
    missing = acked - stored
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged devices were lost"
    # At most the requests in flight at the kill may have committed without an answer.
    assert len(stored - acked) <= stream.unanswered
