"""An mDNS announcer for the discovery tests: `python -m tests.mesh._mdns_peer NODE_ID CLUSTER_ID RPC_PORT`.

Runs `node.mesh.discovery.Discovery` on 127.0.0.1 and prints one JSON line per happening:
{"event": "hint", ...} for every hint, {"event": "peers", "peers": [...], ...} whenever the known
peers or the counters change (so a peer's goodbye is visible), and {"event": "closed", ...} after a clean stop.
Stops when its stdin closes.
"""

from __future__ import annotations

import json
import sys

import trio

from node.clock import WallClock
from node.mesh.discovery import Discovery
from node.mesh.settings import DiscoverySettings


def say(doc: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def watch_peers(discovery: Discovery) -> None:
    """Print the known peers and the counters whenever they change (polled: this is a test tool)."""
    last: dict[str, object] | None = None
    while True:
        stats = discovery.statistics()
        now = {"peers": sorted(discovery.peers), "ignored": stats["ignored"], "hints": stats["hints"]}
        if now != last:
            last = now
            say({"event": "peers", "announced": discovery.announced, **now})
        await trio.sleep(0.05)


async def main(node_id: str, cluster_id: str, mesh_port: int) -> None:
    settings = DiscoverySettings(mdns=True, interfaces=("127.0.0.1",), resolve_timeout_s=3.0)
    discovery = Discovery(
        settings,
        node_id=node_id,
        cluster_id=cluster_id,
        version="test",
        ports={"mesh": mesh_port, "rpc": mesh_port + 1, "relay": mesh_port + 2, "api": mesh_port + 3},
        on_hint=lambda address, peer: say({"event": "hint", "address": address, "node_id": peer}),
        clock=WallClock(),
    )
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        nursery.start_soon(watch_peers, discovery)
        say({"event": "started", "node_id": node_id})
        while await stdin.receive_some(64):
            pass
        nursery.cancel_scope.cancel()
    say({"event": "closed", "announced": discovery.announced, **discovery.statistics()})


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
