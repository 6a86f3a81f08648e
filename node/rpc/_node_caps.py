"""GetCapabilities / WatchCapabilities over the node: the service board and the device census.

The **service board** holds each node service's state (running, degraded, stopped, disabled),
detail and address; the node sets it as services start and stop, and it mirrors every entry into
the gRPC health table (serving while running or degraded), together with the gRPC services that
depend on it. A **snapshot** is the board plus capability counts: the node's own capabilities
(`local`) and, for every capability a device in the caller's scope registered, how many such
devices there are and how many are online. `revision` grows with every registry event and board
change, so equal revisions mean equal content. Watchers get the current snapshot, then a new one
after changes, at most one per `WATCH_MIN_INTERVAL_S` and only when its content changed
(coalesced: a slow reader gets the newest, never a backlog).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

import node
from node.auth import Principal
from node.registry import Registry
from node.rpc import model
from node.rpc._health import HealthState
from store.registry import DeviceFilter

WATCH_MIN_INTERVAL_S = 0.1
CENSUS_PAGE = 500
SERVICE_ORDER = ("api", "registry", "relay", "rpc", "locks", "turn", "mesh")
GRPC_DEPENDS = {
    "asgard.v1.Registry": "registry",
    "asgard.v1.Capabilities": "registry",
    "asgard.v1.Routing": "relay",
    "asgard.v1.LockService": "locks",
}
"""gRPC service → the node service it needs: its health follows that service's state."""


@dataclass(frozen=True, slots=True)
class _Entry:
    state: model.ServiceStateName
    detail: str
    address: str
    capability: str | None


class ServiceBoard:
    """The node's services and what they offer; changes bump the revision and wake watchers."""

    def __init__(self, health: HealthState | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._health = health
        self.revision = 1
        self._changed = trio.Event()

    def set(
        self,
        name: str,
        state: model.ServiceStateName,
        *,
        detail: str = "",
        address: str = "",
        capability: str | None = None,
    ) -> None:
        """Set one service's entry (`capability`: the local capability it offers while up)."""
        old = self._entries.get(name)
        if old is not None:
            capability = capability or old.capability
            address = address or old.address
        self._entries[name] = _Entry(state, detail, address, capability)
        self._sync_health(name)
        self.bump()

    def stop_all(self) -> None:
        """Every service is stopping (node shutdown)."""
        for name in list(self._entries):
            self.set(name, "stopped", detail="the node is shutting down")

    def bump(self) -> None:
        """Something a snapshot shows changed."""
        self.revision += 1
        self._changed.set()
        self._changed = trio.Event()

    def changed(self) -> trio.Event:
        """An event set by the next change (take it before reading)."""
        return self._changed

    def services(self) -> tuple[model.ServiceStatus, ...]:
        """The board in a stable order."""
        order = {name: i for i, name in enumerate(SERVICE_ORDER)}
        names = sorted(self._entries, key=lambda n: (order.get(n, len(order)), n))
        return tuple(
            model.ServiceStatus(n, self._entries[n].state, self._entries[n].detail, self._entries[n].address)
            for n in names
        )

    def local_capabilities(self) -> list[str]:
        """Capabilities of the services that are up."""
        return sorted(
            e.capability
            for e in self._entries.values()
            if e.capability is not None and e.state in ("running", "degraded")
        )

    def attach_health(self, health: HealthState) -> None:
        """Mirror the board into `health` from now on."""
        self._health = health
        for name in self._entries:
            self._sync_health(name)

    def _sync_health(self, name: str) -> None:
        health = self._health
        if health is None:
            return
        up = self._entries[name].state in ("running", "degraded")
        health.set(name, "serving" if up else "not_serving")
        for service, needs in GRPC_DEPENDS.items():
            if needs == name:
                health.set(service, "serving" if up else "not_serving")


class Capabilities:
    """Snapshots for one node (registry + board)."""

    def __init__(self, node_id: str, registry: Registry, board: ServiceBoard, wall: Callable[[], float]):
        self.node_id = node_id
        self.registry = registry
        self.board = board
        self.wall = wall

    async def run(self) -> None:
        """Bump the revision on every registry event (until cancelled)."""
        async with self.registry.subscribe() as events:
            async for _ in events:
                self.board.bump()

    def snapshot(self, who: Principal, network_id: str | None) -> model.CapabilitySnapshot:
        """What the node offers, as `who` may see it."""
        revision = self.board.revision
        counts = self._census(who, network_id)
        local = set(self.board.local_capabilities())
        names = sorted(local | set(counts))
        caps = tuple(
            model.CapabilityCount(n, n in local, counts.get(n, (0, 0))[0], counts.get(n, (0, 0))[1])
            for n in names
        )
        return model.CapabilitySnapshot(
            self.node_id, node.__version__, self.board.services(), caps, self.wall(), revision
        )

    def _census(self, who: Principal, network_id: str | None) -> dict[str, tuple[int, int]]:
        """capability → (online devices, devices) among the devices `who` may see."""
        counts: dict[str, list[int]] = {}
        after: str | None = None
        flt = DeviceFilter(network_id=network_id)
        while True:
            devices, after = self.registry.list_devices(who, flt, after=after, limit=CENSUS_PAGE)
            for device in devices:
                for name in device.capabilities:
                    entry = counts.setdefault(name, [0, 0])
                    entry[0] += device.status == "online"
                    entry[1] += 1
            if after is None:
                return {name: (c[0], c[1]) for name, c in counts.items()}

    async def watch(
        self, who: Principal, network_id: str | None, out: trio.abc.SendChannel[model.CapabilitySnapshot]
    ) -> None:
        """The current snapshot, then one after each change of content (coalesced)."""
        last: tuple[object, object] | None = None
        while True:
            changed = self.board.changed()
            snap = self.snapshot(who, network_id)
            content = (snap.services, snap.capabilities)
            if content != last:
                await out.send(snap)
                last = content
            await changed.wait()
            await trio.sleep(WATCH_MIN_INTERVAL_S)
