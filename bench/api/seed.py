"""Seed a store file with many devices in one transaction, through `store.registry` (no node running).

Device ids are derived from their index (`device_id(i)`), so the load client can pick random existing
ids without being told them. Seeded devices are `offline` with an old last_seen: the registry tracks
only devices that are not offline, so the node does not start a status-change storm mid-benchmark.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import apsw

from node.auth import Role, make_token_row
from store import migrate, open_db
from store import registry as q
from store import tokens as token_rows
from store.records import Device, Network

NETWORK_ID = "5eed0000-0000-4000-8000-000000000001"
ID_BASE = 0x5EED_0000_0000_4000_8000_0000_0000_0000


def device_id(index: int) -> str:
    """The id of seeded device `index` (a valid, non-nil UUID string)."""
    return str(uuid.UUID(int=ID_BASE + index + 1))


@dataclass(frozen=True)
class Seeded:
    path: Path
    devices: int
    network_id: str
    admin_token: str
    seconds: float
    bytes: int


def seed(path: Path, devices: int) -> Seeded:
    """Create `path` (migrated) holding `devices` devices in one network and an admin token."""
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_db(path, synchronous="NORMAL")
    try:
        migrate(conn)
        now = time.time()
        secret, token = make_token_row(
            name="bench admin", role=Role.ADMIN, device_id=None, networks=(), now=now, expires_at=None
        )
        with conn:
            token_rows.insert_token(conn, token)
            q.insert_network(conn, Network(NETWORK_ID, "bench", now, None))
            for i in range(devices):
                q.insert_device(conn, _device(i, now))
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)  # the node starts with an empty WAL
    finally:
        conn.close()
    return Seeded(path, devices, NETWORK_ID, secret, time.perf_counter() - started, path.stat().st_size)


def _device(index: int, now: float) -> Device:
    seen = now - 86_400.0
    return Device(
        device_id=device_id(index),
        network_id=NETWORK_ID,
        name=f"device {index}",
        world_type=("physical", "virtual", "simulated")[index % 3],
        capabilities=("light.on_off", f"zone.{index % 50}"),
        hardware_spec={"cpu": "arm64", "ram_mb": 512 + index % 8 * 256, "serial": f"SN{index:08d}"},
        registered_at=seen,
        updated_at=seen,
        last_seen=seen,
        status="offline",
    )
