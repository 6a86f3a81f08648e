"""A node stand-in for the kill test: take a cluster lock, print its token, hold until killed."""

from __future__ import annotations

import sys

import trio

from node.locks import LockSettings
from node.locks.journal import MemoryLockJournal
from node.locks.service import open_lock_service


async def main(endpoint: str, resource: str, ttl_s: int) -> None:
    settings = LockSettings(etcd_endpoints=(endpoint,), etcd_lease_ttl_s=ttl_s)
    async with open_lock_service(settings, MemoryLockJournal()) as locks:
        lease = await locks.acquire(resource, owner="victim", session="s", lease_s=3600)
        print(lease.token, flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
