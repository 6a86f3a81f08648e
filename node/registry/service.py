"""The registry service: devices, networks, memberships and connections, with scoping by principal,
heartbeat-driven status tracking and status-change events.

Every surface (REST, gRPC, WebSocket) calls these methods with the caller's `Principal`, so the
scoping rule is written once: an object outside the caller's networks does not exist for it
(NotFound, no data). Writes run as one job each on the store's writer thread, where checks and
changes happen in the same transaction.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import apsw
import trio

from node.auth import Action, Principal, Role
from node.clock import WallClock
from node.config import RegistrySettings
from node.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from node.logs import event, logger
from node.registry import _validate as v
from node.registry.state import OFFLINE, ONLINE, STATUSES, StatusChange, StatusTracker
from node.storage import Storage
from store import records
from store import registry as q
from store._values import as_float, as_str

log = logger("registry")

EVENT_BUFFER = 1024


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What a registration supplies."""

    device_id: str
    network_id: str
    world_type: str
    name: str = ""
    capabilities: tuple[str, ...] = ()
    hardware_spec: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DevicePatch:
    """Fields an update may change (None = keep)."""

    name: str | None = None
    world_type: str | None = None
    capabilities: tuple[str, ...] | None = None
    hardware_spec: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """Published on every status change and on registration changes.

    kind: 'status' (old/new set), 'registered', 'updated', 'unregistered'.
    """

    kind: str
    device_id: str
    networks: tuple[str, ...]
    at: float
    old: str | None = None
    new: str | None = None


@dataclass(frozen=True, slots=True)
class Topology:
    network: records.Network
    devices: list[records.Device]
    connections: list[records.Connection]


class Registry:
    """Devices, networks and connections. Create with `Registry(storage, settings, clock)`."""

    def __init__(self, storage: Storage, settings: RegistrySettings, clock: WallClock) -> None:
        self._storage = storage
        self._settings = settings
        self._clock = clock
        self._tracker = StatusTracker(
            settings.heartbeat_interval_s, settings.inactive_after_missed, settings.offline_after_missed
        )
        self._pending_seen: dict[str, float] = {}
        self._subscribers: list[trio.MemorySendChannel[RegistryEvent]] = []
        self._wakeup = trio.Event()
        self.events_dropped = 0

    # ------------------------------------------------------------------ settings
    @property
    def settings(self) -> RegistrySettings:
        return self._settings

    def apply(self, settings: RegistrySettings) -> None:
        """Apply new settings live (thresholds apply to every device at once)."""
        self._settings = settings
        self._tracker.reconfigure(
            settings.heartbeat_interval_s, settings.inactive_after_missed, settings.offline_after_missed
        )
        self._wakeup.set()

    # ------------------------------------------------------------------ devices: reads
    def get_device(self, who: Principal, device_id: str) -> records.Device:
        """The device as `who` may see it. Raises NotFound when absent or outside its networks."""
        return self.redact(who, self._lookup(who, device_id))

    def device_networks(self, who: Principal, device_id: str) -> tuple[str, ...]:
        """The networks of a device as `who` may see them (as `get_device(...).networks`), read
        with one query: the check before routing a frame as that device. Raises NotFound when
        absent or outside `who`'s networks."""
        who.require(Action.READ)
        device_id = v.uuid_id(device_id, "device_id")
        networks = self._storage.read_statement(q.device_network_ids, device_id)  # one SELECT
        if networks is None or not who.sees_any(networks):
            raise NotFound(f"device {device_id} not found")
        scope = who.scope
        return networks if scope is None else tuple(n for n in networks if n in scope)

    @staticmethod
    def redact(who: Principal, device: records.Device) -> records.Device:
        """Hide the networks outside `who`'s scope: their ids are not this caller's business. A
        hidden primary network reads as "" (the API shows null)."""
        scope = who.scope
        if scope is None:
            return device
        networks = tuple(n for n in device.networks if n in scope)
        primary = device.network_id if device.network_id in scope else ""
        if networks == device.networks and primary == device.network_id:
            return device
        return replace(device, networks=networks, network_id=primary)

    def _lookup(self, who: Principal, device_id: str) -> records.Device:
        """The full record of a device `who` may see (for checks before writes)."""
        who.require(Action.READ)
        device_id = v.uuid_id(device_id, "device_id")
        device = self._storage.read(q.get_device, device_id)
        if device is None or not who.sees_any(device.networks):
            raise NotFound(f"device {device_id} not found")
        return self._overlay(device)

    def list_devices(
        self, who: Principal, flt: q.DeviceFilter, *, after: str | None, limit: int
    ) -> tuple[list[records.Device], str | None]:
        """One page and the cursor of the next (None at the end)."""
        who.require(Action.READ)
        if flt.status is not None and flt.status not in STATUSES:
            raise InvalidInput(f"status: expected one of {', '.join(STATUSES)}")
        flt = replace(flt, scope=who.scope)
        rows = self._storage.read(q.list_devices, flt, after=after, limit=limit + 1)
        cursor = rows[limit - 1].device_id if len(rows) > limit else None
        return [self.redact(who, self._overlay(d)) for d in rows[:limit]], cursor

    def _overlay(self, device: records.Device) -> records.Device:
        seen = self._pending_seen.get(device.device_id)
        status = self._tracker.status(device.device_id) or device.status
        if (seen is None or seen <= device.last_seen) and status == device.status:
            return device
        return replace(device, last_seen=max(device.last_seen, seen or 0.0), status=status)

    # ------------------------------------------------------------------ devices: writes
    async def register_device(
        self, who: Principal, spec: DeviceSpec, *, move: bool = False
    ) -> tuple[records.Device, bool]:
        """Create or re-register a device; returns (device, created).

        Re-registration updates metadata and keeps registered_at. A different network is a
        Conflict unless `move` is set (the device then leaves its old primary network).
        """
        device_id = v.uuid_id(spec.device_id, "device_id")
        network_id = v.uuid_id(spec.network_id, "network_id")
        self._require_write(who, device_id, network_id)
        now = self._clock.now()
        new = records.Device(
            device_id=device_id,
            network_id=network_id,
            name=v.name(spec.name, "name"),
            world_type=v.world_type(spec.world_type, self._settings),
            capabilities=v.capabilities(list(spec.capabilities), self._settings),
            hardware_spec=v.hardware_spec(spec.hardware_spec or {}, self._settings),
            registered_at=now,
            updated_at=now,
            last_seen=now,
            status=ONLINE,
        )
        device, created, old_status = await self._storage.write(_register, new, move)
        self._pending_seen.pop(device_id, None)
        self._tracker.track(device_id, now, ONLINE)
        self._wakeup.set()
        self._publish(RegistryEvent("registered" if created else "updated", device_id, device.networks, now))
        if old_status not in (None, ONLINE):
            self._publish(RegistryEvent("status", device_id, device.networks, now, old_status, ONLINE))
        event(
            log,
            20,
            "device registered" if created else "device re-registered",
            device_id=device_id,
            network_id=network_id,
            by=who.token_id,
        )
        return device, created

    async def update_device(self, who: Principal, device_id: str, patch: DevicePatch) -> records.Device:
        current = self._lookup(who, device_id)
        self._require_write(who, current.device_id, current.network_id)
        s = self._settings
        changes: dict[str, Any] = {"updated_at": self._clock.now()}
        if patch.name is not None:
            changes["name"] = v.name(patch.name, "name")
        if patch.world_type is not None:
            changes["world_type"] = v.world_type(patch.world_type, s)
        if patch.capabilities is not None:
            changes["capabilities"] = v.capabilities(list(patch.capabilities), s)
        if patch.hardware_spec is not None:
            changes["hardware_spec"] = v.hardware_spec(patch.hardware_spec, s)
        device = await self._storage.write(_update, current.device_id, changes)
        self._publish(RegistryEvent("updated", device.device_id, device.networks, changes["updated_at"]))
        return self._overlay(device)

    async def unregister_device(self, who: Principal, device_id: str) -> None:
        current = self._lookup(who, device_id)
        self._require_write(who, current.device_id, current.network_id)
        await self._storage.write(_delete_device, current.device_id)
        self._tracker.forget(current.device_id)
        self._pending_seen.pop(current.device_id, None)
        self._publish(RegistryEvent("unregistered", current.device_id, current.networks, self._clock.now()))

    async def heartbeat(self, who: Principal, device_id: str) -> records.Device:
        """A sign of life: last_seen moves, the device is online again."""
        current = self._lookup(who, device_id)
        self._require_write(who, current.device_id, current.network_id)
        return await self.seen(current)

    async def seen(self, device: records.Device) -> records.Device:
        """Record a heartbeat for an already authorised device (relay and gRPC sessions use this)."""
        now = self._clock.now()
        self._pending_seen[device.device_id] = now
        change = self._tracker.heartbeat(device.device_id, now)
        self._wakeup.set()
        if change is not None:
            await self._storage.write(q.set_status, device.device_id, ONLINE, now)
            self._publish(RegistryEvent("status", device.device_id, device.networks, now, change.old, ONLINE))
        return replace(device, last_seen=now, status=ONLINE)

    def _require_write(self, who: Principal, device_id: str, network_id: str) -> None:
        if who.allows(Action.WRITE_REGISTRY):
            if not who.sees_network(network_id):
                raise NotFound(f"network {network_id} not found")
            return
        who.require(Action.WRITE_SELF)
        if who.role is Role.DEVICE and who.device_id != device_id:
            raise PermissionDenied("a device token may only act for its own device")
        if not who.sees_network(network_id):
            raise NotFound(f"network {network_id} not found")

    # ------------------------------------------------------------------ networks
    def get_network(self, who: Principal, network_id: str) -> records.Network:
        who.require(Action.READ)
        network_id = v.uuid_id(network_id, "network_id")
        network = self._storage.read(q.get_network, network_id)
        if network is None or not who.sees_network(network_id):
            raise NotFound(f"network {network_id} not found")
        return network

    def list_networks(
        self, who: Principal, *, after: str | None, limit: int
    ) -> tuple[list[records.Network], str | None]:
        who.require(Action.READ)
        rows = self._storage.read(q.list_networks, scope=who.scope, after=after, limit=limit + 1)
        cursor = rows[limit - 1].network_id if len(rows) > limit else None
        return rows[:limit], cursor

    async def create_network(
        self,
        who: Principal,
        name: str,
        *,
        owner_device_id: str | None = None,
        network_id: str | None = None,
    ) -> records.Network:
        who.require(Action.WRITE_REGISTRY)
        net = records.Network(
            network_id=v.uuid_id(network_id, "network_id") if network_id else str(uuid.uuid4()),
            name=v.name(name, "name", allow_empty=False),
            created_at=self._clock.now(),
            owner_device_id=v.uuid_id(owner_device_id, "owner_device_id") if owner_device_id else None,
        )
        if who.scope is not None:
            raise PermissionDenied("a token restricted to networks cannot create networks")
        await self._storage.write(_create_network, net)
        return net

    async def update_network(
        self,
        who: Principal,
        network_id: str,
        *,
        name: str | None,
        owner_device_id: str | None,
        clear_owner: bool = False,
    ) -> records.Network:
        who.require(Action.WRITE_REGISTRY)
        current = self.get_network(who, network_id)
        new_name = v.name(name, "name", allow_empty=False) if name is not None else current.name
        owner = current.owner_device_id
        if clear_owner:
            owner = None
        elif owner_device_id is not None:
            owner = v.uuid_id(owner_device_id, "owner_device_id")
        return await self._storage.write(_update_network, current.network_id, new_name, owner)

    async def delete_network(self, who: Principal, network_id: str, *, force: bool = False) -> list[str]:
        """Delete a network; returns the devices that were unregistered with it (force only).

        Without `force` a network that still has devices is a Conflict. With `force` the
        memberships go; a device whose primary network it was moves its primary to another of
        its networks, or is unregistered when it has none.
        """
        who.require(Action.WRITE_REGISTRY)
        current = self.get_network(who, network_id)
        removed: list[str] = await self._storage.write(_delete_network, current.network_id, force)
        for device_id in removed:
            self._tracker.forget(device_id)
            self._pending_seen.pop(device_id, None)
            self._publish(RegistryEvent("unregistered", device_id, (current.network_id,), self._clock.now()))
        return removed

    async def add_member(self, who: Principal, network_id: str, device_id: str) -> records.Device:
        who.require(Action.WRITE_REGISTRY)
        network = self.get_network(who, network_id)
        device = self._lookup(who, device_id)
        return await self._storage.write(_add_member, network.network_id, device.device_id, self._clock.now())

    async def remove_member(self, who: Principal, network_id: str, device_id: str) -> None:
        who.require(Action.WRITE_REGISTRY)
        network = self.get_network(who, network_id)
        device = self._lookup(who, device_id)
        await self._storage.write(_remove_member, network.network_id, device.device_id)

    def topology(self, who: Principal, network_id: str, *, limit: int) -> Topology:
        network = self.get_network(who, network_id)
        devices = self._storage.read(
            q.list_devices, q.DeviceFilter(network_id=network.network_id), after=None, limit=limit
        )
        conns = self._storage.read(
            q.list_connections,
            device_id=None,
            network_id=network.network_id,
            status="open",
            scope=None,
            after=None,
            limit=limit,
        )
        return Topology(network, [self.redact(who, self._overlay(d)) for d in devices], conns)

    # ------------------------------------------------------------------ connections
    def get_connection(self, who: Principal, connection_id: str) -> records.Connection:
        who.require(Action.READ)
        connection_id = v.uuid_id(connection_id, "connection_id")
        conn = self._storage.read(q.get_connection, connection_id)
        if conn is None or not self._sees_connection(who, conn):
            raise NotFound(f"connection {connection_id} not found")
        return conn

    def _sees_connection(self, who: Principal, conn: records.Connection) -> bool:
        if who.scope is None:
            return True
        nets = self._storage.read(q.device_networks, conn.source_device_id)
        return who.sees_any(nets)

    def list_connections(
        self,
        who: Principal,
        *,
        device_id: str | None,
        network_id: str | None,
        status: str | None,
        after: str | None,
        limit: int,
    ) -> tuple[list[records.Connection], str | None]:
        who.require(Action.READ)
        if status is not None and status not in ("open", "closed"):
            raise InvalidInput("status: expected open or closed")
        rows = self._storage.read(
            q.list_connections,
            device_id=v.uuid_id(device_id, "device_id") if device_id else None,
            network_id=v.uuid_id(network_id, "network_id") if network_id else None,
            status=status,
            scope=who.scope,
            after=after,
            limit=limit + 1,
        )
        cursor = rows[limit - 1].connection_id if len(rows) > limit else None
        return rows[:limit], cursor

    async def open_connection(
        self, who: Principal, source_device_id: str, target_device_id: str | None, *, kind: str = "link"
    ) -> records.Connection:
        source = self._lookup(who, source_device_id)
        self._require_write(who, source.device_id, source.network_id)
        target = self._lookup(who, target_device_id) if target_device_id else None
        if target is not None and target.device_id == source.device_id:
            raise InvalidInput("target_device_id: a device cannot connect to itself")
        now = self._clock.now()
        conn = records.Connection(
            connection_id=str(uuid.uuid4()),
            source_device_id=source.device_id,
            target_device_id=target.device_id if target else None,
            kind=kind,
            established_at=now,
            last_heartbeat=now,
            status="open",
            closed_at=None,
        )
        await self._storage.write(q.insert_connection, conn)
        return conn

    async def heartbeat_connection(self, who: Principal, connection_id: str) -> records.Connection:
        conn = self.get_connection(who, connection_id)
        self._require_connection_write(who, conn)
        if conn.status != "open":
            raise Conflict(f"connection {conn.connection_id} is closed")
        now = self._clock.now()
        await self._storage.write(q.heartbeat_connection, conn.connection_id, now)
        return replace(conn, last_heartbeat=max(conn.last_heartbeat, now))

    async def close_connection(self, who: Principal, connection_id: str) -> records.Connection:
        conn = self.get_connection(who, connection_id)
        self._require_connection_write(who, conn)
        if conn.status != "open":
            return conn
        now = self._clock.now()
        await self._storage.write(q.close_connection, conn.connection_id, now)
        return replace(conn, status="closed", closed_at=now)

    def _require_connection_write(self, who: Principal, conn: records.Connection) -> None:
        if who.allows(Action.WRITE_REGISTRY):
            return
        who.require(Action.WRITE_SELF)
        if who.device_id not in (conn.source_device_id, conn.target_device_id):
            raise PermissionDenied("a device token may only change its own connections")

    # ------------------------------------------------------------------ events
    @asynccontextmanager
    async def subscribe(
        self, buffer: int = EVENT_BUFFER
    ) -> AsyncIterator[trio.MemoryReceiveChannel[RegistryEvent]]:
        """Receive every RegistryEvent from now on. A subscriber that falls `buffer` events
        behind loses the newest ones (counted in `events_dropped`), never slows the registry."""
        send, receive = trio.open_memory_channel[RegistryEvent](buffer)
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.remove(send)
            send.close()

    def _publish(self, ev: RegistryEvent) -> None:
        for channel in self._subscribers:
            try:
                channel.send_nowait(ev)
            except trio.WouldBlock:
                self.events_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # ------------------------------------------------------------------ background work
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load tracked devices, then sweep statuses and flush last_seen until cancelled."""
        for device_id, last_seen, status in self._storage.read(_tracked_devices):
            self._tracker.track(device_id, last_seen, status)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_forever, name="registry-status")
            nursery.start_soon(self._flush_forever, name="registry-last-seen")
            task_status.started()

    async def _sweep_forever(self) -> None:
        while True:
            deadline = self._tracker.next_deadline()
            self._wakeup = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else self._clock.to_trio(deadline)):
                await self._wakeup.wait()
            changes = self._tracker.advance(self._clock.now())
            if changes:
                await self._apply_changes(changes)

    async def _apply_changes(self, changes: list[StatusChange]) -> None:
        nets = await self._storage.write(_write_statuses, [(c.device_id, c.new, c.at) for c in changes])
        for c in changes:
            self._publish(RegistryEvent("status", c.device_id, nets.get(c.device_id, ()), c.at, c.old, c.new))
            event(log, 20, "device status changed", device_id=c.device_id, old=c.old, new=c.new)

    async def _flush_forever(self) -> None:
        try:
            while True:
                await trio.sleep(self._settings.last_seen_flush_interval_s)
                await self.flush_last_seen()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush_last_seen()

    async def flush_last_seen(self) -> None:
        """Write out the last_seen times gathered since the previous flush."""
        if self._pending_seen:
            batch, self._pending_seen = self._pending_seen, {}
            await self._storage.write(q.touch_devices, list(batch.items()))

    def statistics(self) -> dict[str, Any]:
        counts = self._storage.read(q.count_devices_by_status)
        return {
            "devices": {s: counts.get(s, 0) for s in STATUSES},
            "tracked": len(self._tracker),
            "subscribers": len(self._subscribers),
            "events_dropped": self.events_dropped,
            "networks": self._storage.read(q.count_rows, "networks"),
            "connections": self._storage.read(q.count_rows, "connections"),
        }


# ---------------------------------------------------------------------- writer-thread jobs
# Each runs inside one SAVEPOINT on the writer thread: checks and changes are atomic.


def _register(
    conn: apsw.Connection, new: records.Device, move: bool
) -> tuple[records.Device, bool, str | None]:
    if not q.network_exists(conn, new.network_id):
        raise NotFound(f"network {new.network_id} not found")
    old = q.get_device(conn, new.device_id)
    if old is None:
        q.insert_device(conn, new)
        return q.get_device(conn, new.device_id) or new, True, None
    if old.network_id != new.network_id:
        if not move:
            raise Conflict(
                f"device {new.device_id} is registered in network {old.network_id}; set move=true to move it"
            )
        q.remove_member(conn, old.network_id, old.device_id)
    q.update_device(conn, replace(new, registered_at=old.registered_at))
    return q.get_device(conn, new.device_id) or new, False, old.status


def _update(conn: apsw.Connection, device_id: str, changes: dict[str, Any]) -> records.Device:
    old = q.get_device(conn, device_id)
    if old is None:
        raise NotFound(f"device {device_id} not found")
    q.update_device(conn, replace(old, **changes))
    return q.get_device(conn, device_id) or old


def _delete_device(conn: apsw.Connection, device_id: str) -> None:
    if not q.delete_device(conn, device_id):
        raise NotFound(f"device {device_id} not found")


def _create_network(conn: apsw.Connection, net: records.Network) -> None:
    if q.network_exists(conn, net.network_id):
        raise Conflict(f"network {net.network_id} already exists")
    if net.owner_device_id and q.get_device(conn, net.owner_device_id) is None:
        raise NotFound(f"device {net.owner_device_id} not found")
    q.insert_network(conn, net)


def _update_network(conn: apsw.Connection, network_id: str, name: str, owner: str | None) -> records.Network:
    if owner is not None and q.get_device(conn, owner) is None:
        raise NotFound(f"device {owner} not found")
    if not q.update_network(conn, network_id, name, owner):
        raise NotFound(f"network {network_id} not found")
    network = q.get_network(conn, network_id)
    assert network is not None
    return network


def _delete_network(conn: apsw.Connection, network_id: str, force: bool) -> list[str]:
    members = q.network_device_ids(conn, network_id)
    if members and not force:
        raise Conflict(f"network {network_id} still has {len(members)} devices; use force=true")
    removed = []
    for device_id in q.primary_device_ids(conn, network_id):
        others = [n for n in q.device_networks(conn, device_id) if n != network_id]
        if others:
            conn.execute("UPDATE devices SET network_id = ? WHERE device_id = ?", (others[0], device_id))
        else:
            q.delete_device(conn, device_id)
            removed.append(device_id)
    if not q.delete_network(conn, network_id):
        raise NotFound(f"network {network_id} not found")
    return removed


def _add_member(conn: apsw.Connection, network_id: str, device_id: str, at: float) -> records.Device:
    q.add_member(conn, network_id, device_id, at)
    device = q.get_device(conn, device_id)
    if device is None:
        raise NotFound(f"device {device_id} not found")
    return device


def _remove_member(conn: apsw.Connection, network_id: str, device_id: str) -> None:
    device = q.get_device(conn, device_id)
    if device is None:
        raise NotFound(f"device {device_id} not found")
    if device.network_id == network_id:
        raise Conflict("cannot leave the primary network; move the device to another network first")
    if not q.remove_member(conn, network_id, device_id):
        raise NotFound(f"device {device_id} is not a member of network {network_id}")


def _write_statuses(
    conn: apsw.Connection, changes: Sequence[tuple[str, str, float]]
) -> dict[str, tuple[str, ...]]:
    nets = {}
    for device_id, status, _at in changes:
        conn.execute("UPDATE devices SET status = ? WHERE device_id = ?", (status, device_id))
        nets[device_id] = q.device_networks(conn, device_id)
    return nets


def _tracked_devices(conn: apsw.Connection) -> list[tuple[str, float, str]]:
    rows = conn.execute("SELECT device_id, last_seen, status FROM devices WHERE status != ?", (OFFLINE,))
    return [(as_str(r[0]), as_float(r[1]), as_str(r[2])) for r in rows]
