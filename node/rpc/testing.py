"""In-memory stand-ins for the node behind the gRPC router: for tests, benchmarks and development.

`MemoryBackend` implements `RpcBackend` with dicts (devices, locks) and echoes Connect streams;
`StaticAuthenticator` maps fixed tokens to principals. Neither persists anything or checks
permissions beyond what a test needs; the node's real implementations live elsewhere.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import replace

import trio

from node.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from node.rpc import model
from node.rpc.model import Principal


class StaticAuthenticator:
    """Tokens from a fixed table; `calls` counts checks (to observe the gate's cache)."""

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._tokens = dict(tokens)
        self.calls = 0

    async def authenticate(self, token: str) -> Principal:
        """The principal of `token`, or Unauthenticated (reason "unknown-token")."""
        self.calls += 1
        await trio.lowlevel.checkpoint()
        try:
            return self._tokens[token]
        except KeyError:
            raise Unauthenticated("unknown token", reason="unknown-token") from None


class MemoryBackend:
    """A small in-memory node: registry, status events, echoing Connect, simple locks."""

    def __init__(self, *, node_id: str = "00000000-0000-4000-8000-000000000001") -> None:
        self.node_id = node_id
        self.devices: dict[str, model.DeviceRecord] = {}
        self.delay_s = 0.0
        """Every unary call first sleeps this long (to test deadlines)."""
        self.cancelled_calls = 0
        """Unary calls that were cancelled while they waited (deadline or client gone)."""
        self.call_cancelled = trio.Event()
        """Set when a waiting unary call is cancelled."""
        self.waiting = 0
        """Unary calls sleeping in `delay_s` right now."""
        self._waiting_changed = trio.Event()
        self._watchers_changed = trio.Event()
        self.revision = 1
        self._revised = trio.Event()
        self._status_watchers: list[tuple[model.StatusWatch, trio.MemorySendChannel[model.StatusEvent]]] = []
        self._locks = _Locks()

    def _bump(self) -> None:
        self.revision += 1
        self._revised.set()
        self._revised = trio.Event()

    async def _pause(self) -> None:
        if self.delay_s <= 0:
            await trio.lowlevel.checkpoint()
            return
        self._set_waiting(self.waiting + 1)
        try:
            await trio.sleep(self.delay_s)
        except trio.Cancelled:
            self.cancelled_calls += 1
            self.call_cancelled.set()
            raise
        finally:
            self._set_waiting(self.waiting - 1)

    def _set_waiting(self, count: int) -> None:
        self.waiting = count
        self._waiting_changed.set()
        self._waiting_changed = trio.Event()

    async def wait_until_status_watchers(self, count: int) -> None:
        """Return once exactly `count` WatchStatus streams are open on the node side."""
        while len(self._status_watchers) != count:
            await self._watchers_changed.wait()
            self._watchers_changed = trio.Event()

    async def wait_until_waiting(self, count: int) -> None:
        """Return once exactly `count` unary calls are sleeping in `delay_s`."""
        while self.waiting != count:
            await self._waiting_changed.wait()

    # Registry ------------------------------------------------------------------------------
    async def register_device(self, principal: Principal, req: model.DeviceRegistration) -> model.Registered:
        await self._pause()
        device_id = req.device_id or str(uuid.uuid4())
        old = self.devices.get(device_id)
        if old is not None and old.network_id != req.network_id:
            raise Conflict(f"device {device_id} is registered in another network")
        now = time.time()
        record = model.DeviceRecord(
            device_id=device_id,
            network_id=req.network_id,
            world_type=req.world_type,
            capabilities=tuple(dict.fromkeys(req.capabilities)),
            hardware_spec=req.hardware_spec,
            registered_at=now if old is None else old.registered_at,
            last_seen=now,
            status="online",
            networks=tuple(sorted({req.network_id, *req.networks})),
            name=req.name,
            updated_at=now,
        )
        self.devices[device_id] = record
        self._bump()
        self._status_changed(record, None if old is None else old.status, now)
        return model.Registered(record, created=old is None)

    async def get_device(self, principal: Principal, device_id: str) -> model.DeviceRecord:
        await self._pause()
        return self._device(device_id)

    def _device(self, device_id: str) -> model.DeviceRecord:
        try:
            return self.devices[device_id]
        except KeyError:
            raise NotFound(f"device {device_id} not found") from None

    async def list_devices(self, principal: Principal, query: model.DeviceQuery) -> model.DevicePage:
        await self._pause()
        size = min(query.page_size or 50, 500)
        matching = [
            d
            for _, d in sorted(self.devices.items())
            if _matches(d, query) and (query.page_token is None or d.device_id > query.page_token)
        ]
        page = tuple(matching[:size])
        more = len(matching) > size
        return model.DevicePage(page, page[-1].device_id if more else None)

    async def update_device(self, principal: Principal, update: model.DeviceUpdate) -> model.DeviceRecord:
        await self._pause()
        old = self._device(update.device_id)
        changes = {
            k: v
            for k, v in {
                "network_id": update.network_id,
                "world_type": update.world_type,
                "capabilities": update.capabilities,
                "hardware_spec": update.hardware_spec,
                "networks": update.networks,
                "name": update.name,
            }.items()
            if v is not None
        }
        record = replace(old, updated_at=time.time(), **changes)  # type: ignore[arg-type]
        if record.network_id not in record.networks:
            raise InvalidInput("networks must contain network_id")
        self.devices[record.device_id] = record
        self._bump()
        return record

    async def unregister_device(self, principal: Principal, device_id: str) -> bool:
        await self._pause()
        old = self.devices.pop(device_id, None)
        if old is None:
            return False
        self._bump()
        self._status_changed(replace(old, status="unregistered"), old.status, time.time())
        return True

    async def heartbeat(self, principal: Principal, device_id: str) -> model.HeartbeatResult:
        await self._pause()
        old = self._device(device_id)
        now = time.time()
        self.devices[device_id] = replace(old, last_seen=now, status="online")
        if old.status != "online":
            self._status_changed(self.devices[device_id], old.status, now)
        return model.HeartbeatResult("online", now, 30.0)

    async def discover(
        self, principal: Principal, query: model.DiscoverQuery
    ) -> tuple[model.DeviceRecord, ...]:
        await self._pause()
        found = [
            d
            for _, d in sorted(self.devices.items())
            if set(query.capabilities) <= set(d.capabilities)
            and (query.network_id is None or query.network_id in d.networks)
            and (query.include_offline or d.status == "online")
        ]
        return tuple(found[: query.limit or 50])

    async def watch_status(
        self,
        principal: Principal,
        query: model.StatusWatch,
        events: trio.abc.SendChannel[model.StatusEvent],
    ) -> None:
        send, receive = trio.open_memory_channel[model.StatusEvent](256)
        entry = (query, send)
        self._status_watchers.append(entry)
        self._watchers_changed.set()
        try:
            if query.send_initial:
                for d in sorted(self.devices.values(), key=lambda d: d.device_id):
                    if _in_watch(query, d.device_id, d.network_id):
                        await events.send(
                            model.StatusEvent(d.device_id, d.network_id, d.status, None, time.time())
                        )
            async for event in receive:
                await events.send(event)
        finally:
            self._status_watchers.remove(entry)
            self._watchers_changed.set()

    def _status_changed(
        self, record: model.DeviceRecord, previous: model.DeviceStatusName | None, now: float
    ) -> None:
        event = model.StatusEvent(record.device_id, record.network_id, record.status, previous, now)
        for query, channel in self._status_watchers:
            if _in_watch(query, record.device_id, record.network_id):
                # A stuck watcher loses events; a test backend need not do better.
                with contextlib.suppress(trio.WouldBlock):
                    channel.send_nowait(event)

    # Routing -------------------------------------------------------------------------------
    def send(self, principal: Principal, frame: bytes) -> model.SendResult | Awaitable[model.SendResult]:
        """Acknowledge at once, as a plain function (no task), or after `delay_s` when set."""
        if self.delay_s > 0:
            return self._send_later(frame)
        return _ack(frame)

    async def _send_later(self, frame: bytes) -> model.SendResult:
        await self._pause()
        return _ack(frame)

    async def connect(
        self,
        principal: Principal,
        frames_in: trio.abc.ReceiveChannel[bytes],
        frames_out: trio.abc.SendChannel[bytes],
    ) -> None:
        """Echo every frame back, in order."""
        async for frame in frames_in:
            await frames_out.send(frame)

    # Capabilities --------------------------------------------------------------------------
    async def capabilities(self, principal: Principal, network_id: str | None) -> model.CapabilitySnapshot:
        await self._pause()
        return self._snapshot(network_id)

    def _snapshot(self, network_id: str | None) -> model.CapabilitySnapshot:
        counts: dict[str, list[int]] = {"locks": [0, 0], "routing": [0, 0]}
        for d in self.devices.values():
            if network_id is not None and network_id not in d.networks:
                continue
            for name in d.capabilities:
                entry = counts.setdefault(name, [0, 0])
                entry[0] += d.status == "online"
                entry[1] += 1
        caps = tuple(
            model.CapabilityCount(name, name in ("locks", "routing"), online, total)
            for name, (online, total) in sorted(counts.items())
        )
        services = (model.ServiceStatus("rpc", "running"), model.ServiceStatus("locks", "running"))
        return model.CapabilitySnapshot(self.node_id, "0.1.0", services, caps, time.time(), self.revision)

    async def watch_capabilities(
        self,
        principal: Principal,
        network_id: str | None,
        snapshots: trio.abc.SendChannel[model.CapabilitySnapshot],
    ) -> None:
        while True:
            revised = self._revised
            await snapshots.send(self._snapshot(network_id))
            await revised.wait()

    # Locks ---------------------------------------------------------------------------------
    async def acquire_lock(
        self,
        principal: Principal,
        req: model.LockRequest,
        updates: trio.abc.SendChannel[model.AcquireUpdate],
    ) -> None:
        await self._locks.acquire(principal, req, updates)

    async def release_lock(self, principal: Principal, resource: str, fencing_token: int) -> bool:
        await trio.lowlevel.checkpoint()
        return self._locks.release(resource, fencing_token)

    async def refresh_lock(
        self, principal: Principal, resource: str, fencing_token: int, lease_s: float | None
    ) -> model.LeaseInfo:
        await trio.lowlevel.checkpoint()
        return self._locks.refresh(resource, fencing_token, lease_s)

    async def list_locks(self, principal: Principal, query: model.LockQuery) -> model.LockPage:
        await trio.lowlevel.checkpoint()
        return model.LockPage(self._locks.summaries(query.prefix))

    async def watch_locks(
        self, principal: Principal, prefix: str, events: trio.abc.SendChannel[model.LockChange]
    ) -> None:
        await self._locks.watch(prefix, events)


def _matches(d: model.DeviceRecord, q: model.DeviceQuery) -> bool:
    return (
        (q.network_id is None or q.network_id in d.networks)
        and (q.world_type is None or d.world_type == q.world_type)
        and (q.status is None or d.status == q.status)
        and (q.capability is None or q.capability in d.capabilities)
    )


def _in_watch(query: model.StatusWatch, device_id: str, network_id: str) -> bool:
    return (query.network_id is None or query.network_id == network_id) and (
        not query.device_ids or device_id in query.device_ids
    )


class _Locks:
    """Exclusive/shared locks with a FIFO queue; enough to exercise the Acquire stream."""

    def __init__(self) -> None:
        self._holders: dict[str, dict[int, tuple[model.LeaseInfo, trio.Event]]] = {}
        self._waiting: dict[str, list[trio.Event]] = {}
        self._tokens: dict[str, int] = {}
        self._watchers: list[tuple[str, trio.MemorySendChannel[model.LockChange]]] = []

    def _grantable(self, resource: str, mode: model.LockModeName) -> bool:
        held = [lease for lease, _ in self._holders.get(resource, {}).values()]
        return not held or (mode == "shared" and all(h.mode == "shared" for h in held))

    async def acquire(
        self,
        principal: Principal,
        req: model.LockRequest,
        updates: trio.abc.SendChannel[model.AcquireUpdate],
    ) -> None:
        resource = req.resource
        if not self._grantable(resource, req.mode):
            if req.wait_timeout_s == 0:
                await updates.send(model.AcquireUpdate("refused", reason="busy", detail="held"))
                return
            waiters = self._waiting.setdefault(resource, [])
            await updates.send(model.AcquireUpdate("queued", queue_position=len(waiters)))
            with trio.move_on_after(req.wait_timeout_s or 3600) as scope:
                while not self._grantable(resource, req.mode):
                    turn = trio.Event()
                    waiters.append(turn)
                    try:
                        await turn.wait()
                    finally:
                        waiters.remove(turn)
            if scope.cancelled_caught:
                await updates.send(model.AcquireUpdate("refused", reason="timeout"))
                return
        token = self._tokens.get(resource, 0) + 1
        self._tokens[resource] = token
        lease_s = req.lease_s or 30.0
        lease = model.LeaseInfo(
            resource, req.mode, token, req.holder or principal.subject, time.time() + lease_s, req.priority
        )
        ended = trio.Event()
        self._holders.setdefault(resource, {})[token] = (lease, ended)
        self._emit(model.LockChange("granted", resource, lease, time.time()))
        await updates.send(model.AcquireUpdate("granted", lease=lease))
        with trio.move_on_after(lease_s) as scope:
            await ended.wait()
        if scope.cancelled_caught:
            self._end(resource, token, "expired")
            await updates.send(model.AcquireUpdate("expired", lease=lease))
        else:
            await updates.send(model.AcquireUpdate("released", lease=lease))

    def release(self, resource: str, token: int) -> bool:
        return self._end(resource, token, "released")

    def _end(self, resource: str, token: int, kind: model.LockEventKindName) -> bool:
        entry = self._holders.get(resource, {}).pop(token, None)
        if entry is None:
            return False
        lease, ended = entry
        ended.set()
        for turn in self._waiting.get(resource, []):
            turn.set()
        self._emit(model.LockChange(kind, resource, lease, time.time()))
        return True

    def refresh(self, resource: str, token: int, lease_s: float | None) -> model.LeaseInfo:
        entry = self._holders.get(resource, {}).get(token)
        if entry is None:
            raise NotFound(f"no lease {token} on {resource}")
        lease = replace(entry[0], expires_at=time.time() + (lease_s or 30.0))
        self._holders[resource][token] = (lease, entry[1])
        self._emit(model.LockChange("refreshed", resource, lease, time.time()))
        return lease

    def summaries(self, prefix: str) -> tuple[model.LockSummary, ...]:
        return tuple(
            model.LockSummary(
                name,
                tuple(lease for lease, _ in held.values()),
                len(self._waiting.get(name, [])),
                self._tokens.get(name, 0),
            )
            for name, held in sorted(self._holders.items())
            if name.startswith(prefix) and held
        )

    async def watch(self, prefix: str, events: trio.abc.SendChannel[model.LockChange]) -> None:
        send, receive = trio.open_memory_channel[model.LockChange](256)
        entry = (prefix, send)
        self._watchers.append(entry)
        try:
            async for change in receive:
                await events.send(change)
        finally:
            self._watchers.remove(entry)

    def _emit(self, change: model.LockChange) -> None:
        for prefix, channel in self._watchers:
            if change.resource.startswith(prefix):
                with contextlib.suppress(trio.WouldBlock):
                    channel.send_nowait(change)


def _ack(frame: bytes) -> model.SendResult:
    message_id = int.from_bytes(frame[4:12], "big") if len(frame) >= 12 else 0
    return model.SendResult(message_id, "delivered", 1)
