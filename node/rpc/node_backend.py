"""The node behind the gRPC router: `RpcBackend` over the Registry, the relay's Router and the
LockService, and `Authenticator` over the TokenService (the tokens and roles of REST).

Scoping is the registry's: every call is made with the caller's `node.auth.Principal`, so a
device token sees over gRPC exactly what it sees over REST (devices of its networks only, other
networks' ids redacted). The router's plain `Principal` is mapped to the node's one field by field
(`subject` is the token id). Routing and Connect: `_node_routing`; locks: `_node_locks`;
capabilities: `_node_caps`; running it all in the node: `_node_serve.NodeRpc`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass

import trio

from node.auth import Action, Role, well_formed
from node.auth import Principal as NodePrincipal
from node.config import ApiSettings
from node.errors import InvalidInput, NotFound, Unauthenticated
from node.registry import DevicePatch, DeviceSpec, Registry, RegistryEvent
from node.rpc import model
from node.rpc._node_caps import Capabilities, ServiceBoard
from node.rpc._node_locks import NodeLocks
from node.rpc._node_routing import NodeRouting
from node.rpc._node_serve import NodeRpc
from node.tokens import TokenService
from store import records
from store.registry import DeviceFilter

__all__ = [
    "Capabilities",
    "NodeAuthenticator",
    "NodeBackend",
    "NodeLocks",
    "NodeRouting",
    "NodeRpc",
    "ServiceBoard",
    "device_record",
    "node_principal",
]


def node_principal(p: model.Principal) -> NodePrincipal:
    """The router's principal as the node's (the same fields; `subject` is the token id)."""
    return NodePrincipal(p.subject, Role(p.role), p.device_id, p.networks)


class NodeAuthenticator:
    """Bearer tokens checked by the TokenService (one indexed read, like REST)."""

    def __init__(self, tokens: TokenService) -> None:
        self._tokens = tokens

    async def authenticate(self, token: str) -> model.Principal:
        """The token's principal; Unauthenticated (reason "unknown-token" when it is not ours)."""
        await trio.lowlevel.checkpoint()
        if not well_formed(token):
            raise Unauthenticated("unknown token", reason="unknown-token")
        try:
            p = self._tokens.authenticate(token)
        except Unauthenticated as exc:
            if exc.detail == "unknown token":
                raise Unauthenticated("unknown token", reason="unknown-token") from None
            raise
        return model.Principal(p.token_id, p.role.value, p.networks, p.device_id)


def device_record(d: records.Device) -> model.DeviceRecord:
    """A registry row (already redacted for the caller) as the router's record."""
    return model.DeviceRecord(
        device_id=d.device_id,
        network_id=d.network_id,
        world_type=d.world_type,
        capabilities=d.capabilities,
        hardware_spec=d.hardware_spec,
        registered_at=d.registered_at,
        last_seen=d.last_seen,
        status=d.status,  # type: ignore[arg-type]
        networks=tuple(sorted(d.networks)),
        name=d.name,
        updated_at=d.updated_at,
    )


@dataclass
class NodeBackend:
    """Everything the gRPC services need from the node (see the module docstring)."""

    registry: Registry
    routing: NodeRouting
    locks: NodeLocks
    caps: Capabilities
    api: ApiSettings

    async def run(self) -> None:
        """Background work (capability revisions) until cancelled."""
        await self.caps.run()

    def apply_settings(self, api: ApiSettings) -> None:
        """Take the node's [api] settings (page sizes: the running values, as REST uses)."""
        self.api = api

    def _limit(self, requested: int | None) -> int:
        """A page size: the default when absent, capped at the maximum (the proto's rule)."""
        default = min(self.api.page_size_default, self.api.page_size_max)
        return min(requested or default, self.api.page_size_max)

    # -- registry -------------------------------------------------------------------------------
    async def register_device(
        self, principal: model.Principal, req: model.DeviceRegistration
    ) -> model.Registered:
        who = node_principal(principal)
        spec = DeviceSpec(
            device_id=req.device_id or str(uuid.uuid4()),
            network_id=req.network_id,
            world_type=req.world_type,
            name=req.name,
            capabilities=req.capabilities,
            hardware_spec=req.hardware_spec,
        )
        device, created = await self.registry.register_device(who, spec)
        for network in req.networks:
            if network not in device.networks:
                device = await self.registry.add_member(who, network, device.device_id)
        return model.Registered(device_record(self.registry.get_device(who, device.device_id)), created)

    # The reads below are plain functions: the bridge answers them in its hand-over, no task.
    def get_device(self, principal: model.Principal, device_id: str) -> model.DeviceRecord:
        return device_record(self.registry.get_device(node_principal(principal), device_id))

    def list_devices(self, principal: model.Principal, query: model.DeviceQuery) -> model.DevicePage:
        flt = DeviceFilter(
            network_id=query.network_id,
            world_type=query.world_type,
            status=query.status,
            capability=query.capability,
        )
        after = _cursor(query.page_token)
        devices, cursor = self.registry.list_devices(
            node_principal(principal), flt, after=after, limit=self._limit(query.page_size)
        )
        return model.DevicePage(tuple(device_record(d) for d in devices), cursor)

    async def update_device(
        self, principal: model.Principal, update: model.DeviceUpdate
    ) -> model.DeviceRecord:
        who = node_principal(principal)
        current = self.registry.get_device(who, update.device_id)
        patch = DevicePatch(update.name, update.world_type, update.capabilities, update.hardware_spec)
        if any(
            v is not None for v in (patch.name, patch.world_type, patch.capabilities, patch.hardware_spec)
        ):
            current = await self.registry.update_device(who, current.device_id, patch)
        if update.network_id is not None and update.network_id != current.network_id:
            current = await self._move_primary(who, current, update.network_id)
        if update.networks is not None:
            await self._set_networks(who, current, set(update.networks))
        return device_record(self.registry.get_device(who, current.device_id))

    async def _move_primary(
        self, who: NodePrincipal, device: records.Device, network_id: str
    ) -> records.Device:
        """Make `network_id` (a network the device is in) its primary; it stays in the old one."""
        if network_id not in device.networks:
            raise InvalidInput("network_id: the device must already belong to the new primary network")
        spec = DeviceSpec(
            device.device_id,
            network_id,
            device.world_type,
            device.name,
            device.capabilities,
            device.hardware_spec,
        )
        moved, _ = await self.registry.register_device(who, spec, move=True)
        if device.network_id:  # `move` left the old primary: keep its membership
            moved = await self.registry.add_member(who, device.network_id, device.device_id)
        return moved

    async def _set_networks(self, who: NodePrincipal, device: records.Device, wanted: set[str]) -> None:
        if device.network_id not in wanted:
            raise InvalidInput("networks: must contain the primary network_id")
        for network in sorted(wanted - set(device.networks)):
            await self.registry.add_member(who, network, device.device_id)
        for network in sorted(set(device.networks) - wanted):
            await self.registry.remove_member(who, network, device.device_id)

    async def unregister_device(self, principal: model.Principal, device_id: str) -> bool:
        try:
            await self.registry.unregister_device(node_principal(principal), device_id)
        except NotFound:
            return False
        return True

    async def heartbeat(self, principal: model.Principal, device_id: str) -> model.HeartbeatResult:
        device = await self.registry.heartbeat(node_principal(principal), device_id)
        interval = self.registry.settings.heartbeat_interval_s
        return model.HeartbeatResult(device.status, device.last_seen, interval)  # type: ignore[arg-type]

    async def discover(
        self, principal: model.Principal, query: model.DiscoverQuery
    ) -> tuple[model.DeviceRecord, ...]:
        if not query.capabilities:
            raise InvalidInput("capabilities: name at least one", field="capabilities")
        who = node_principal(principal)
        wanted, limit = set(query.capabilities), self._limit(query.limit)
        flt = DeviceFilter(
            network_id=query.network_id,
            capability=query.capabilities[0],
            status=None if query.include_offline else "online",
        )
        found: list[model.DeviceRecord] = []
        after: str | None = None
        while len(found) < limit:
            devices, after = self.registry.list_devices(who, flt, after=after, limit=self.api.page_size_max)
            found += [device_record(d) for d in devices if wanted <= set(d.capabilities)]
            if after is None:
                break
        return tuple(found[:limit])

    async def watch_status(
        self,
        principal: model.Principal,
        query: model.StatusWatch,
        events: trio.abc.SendChannel[model.StatusEvent],
    ) -> None:
        who = node_principal(principal)
        who.require(Action.READ)
        if query.network_id is not None:
            self.registry.get_network(who, query.network_id)  # NotFound outside the scope
        async with self.registry.subscribe() as changes:  # first: no change is missed meanwhile
            if query.send_initial:
                for initial in self._initial_statuses(who, query):
                    await events.send(initial)
            async for change in changes:
                event = self._status_event(who, query, change)
                if event is not None:
                    await events.send(event)

    def _initial_statuses(self, who: NodePrincipal, query: model.StatusWatch) -> list[model.StatusEvent]:
        now = self.caps.wall()
        out: list[model.StatusEvent] = []
        after: str | None = None
        while True:
            flt = DeviceFilter(network_id=query.network_id)
            devices, after = self.registry.list_devices(who, flt, after=after, limit=self.api.page_size_max)
            out += [
                model.StatusEvent(d.device_id, d.network_id, d.status, None, now)  # type: ignore[arg-type]
                for d in devices
                if not query.device_ids or d.device_id in query.device_ids
            ]
            if after is None:
                return out

    def _status_event(
        self, who: NodePrincipal, query: model.StatusWatch, change: RegistryEvent
    ) -> model.StatusEvent | None:
        if change.kind == "status":
            status, previous = change.new, change.old
        elif change.kind == "registered":
            status, previous = "online", None
        elif change.kind == "unregistered":
            status, previous = "unregistered", None
        else:
            return None
        visible = [n for n in change.networks if who.sees_network(n)]
        if not visible or (query.network_id is not None and query.network_id not in change.networks):
            return None
        if query.device_ids and change.device_id not in query.device_ids:
            return None
        network = visible[0]
        if change.kind != "unregistered":
            with contextlib.suppress(NotFound):  # removed meanwhile: a visible network will do
                network = self.registry.get_device(who, change.device_id).network_id or network
        return model.StatusEvent(change.device_id, network, status, previous, change.at)  # type: ignore[arg-type]

    # -- routing --------------------------------------------------------------------------------
    def send(
        self, principal: model.Principal, frame: bytes
    ) -> model.SendResult | Awaitable[model.SendResult]:
        return self.routing.send(node_principal(principal), frame)

    async def connect(
        self,
        principal: model.Principal,
        frames_in: trio.abc.ReceiveChannel[bytes],
        frames_out: trio.abc.SendChannel[bytes],
    ) -> None:
        await self.routing.connect(node_principal(principal), frames_in, frames_out)

    # -- capabilities ---------------------------------------------------------------------------
    def capabilities(self, principal: model.Principal, network_id: str | None) -> model.CapabilitySnapshot:
        who = node_principal(principal)
        if network_id is not None:
            self.registry.get_network(who, network_id)
        return self.caps.snapshot(who, network_id)

    async def watch_capabilities(
        self,
        principal: model.Principal,
        network_id: str | None,
        snapshots: trio.abc.SendChannel[model.CapabilitySnapshot],
    ) -> None:
        who = node_principal(principal)
        if network_id is not None:
            self.registry.get_network(who, network_id)
        await self.caps.watch(who, network_id, snapshots)

    # -- locks ----------------------------------------------------------------------------------
    async def acquire_lock(
        self,
        principal: model.Principal,
        req: model.LockRequest,
        updates: trio.abc.SendChannel[model.AcquireUpdate],
    ) -> None:
        await self.locks.acquire(node_principal(principal), req, updates)

    async def release_lock(self, principal: model.Principal, resource: str, fencing_token: int) -> bool:
        return await self.locks.release(node_principal(principal), resource, fencing_token)

    async def refresh_lock(
        self, principal: model.Principal, resource: str, fencing_token: int, lease_s: float | None
    ) -> model.LeaseInfo:
        return await self.locks.refresh(node_principal(principal), resource, fencing_token, lease_s)

    def list_locks(self, principal: model.Principal, query: model.LockQuery) -> model.LockPage:
        default = min(self.api.page_size_default, self.api.page_size_max)
        return self.locks.list(node_principal(principal), query, default, self.api.page_size_max)

    async def watch_locks(
        self, principal: model.Principal, prefix: str, events: trio.abc.SendChannel[model.LockChange]
    ) -> None:
        await self.locks.watch(node_principal(principal), prefix, events)


def _cursor(token: str | None) -> str | None:
    if not token:
        return None
    try:
        return str(uuid.UUID(token))
    except ValueError:
        raise InvalidInput("page_token: not a token this node gave out", field="page_token") from None
