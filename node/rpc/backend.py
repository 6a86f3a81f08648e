"""The seams between the gRPC router and the node: `Authenticator` and `RpcBackend`.

Both are implemented by the node on the Trio side; the router calls them through the bridge.
Every `async` method runs as a Trio task in a cancel scope carrying the gRPC call's deadline, so a
method that waits is cancelled when the deadline passes or the client goes away. `send` and the
reads (`get_device`, `list_devices`, `capabilities`, `list_locks`) may also be plain functions that
answer at once (they then run inside the bridge's hand-over, with no task: they must not block)
or return an awaitable for the cases where they must wait. Errors are raised as
`node.errors.NodeError` subclasses and mapped once to gRPC statuses (`grpc_status` on the class);
any other exception becomes INTERNAL with a generic message (and is logged).

Streaming methods get Trio channels that cross to the island thread with credit flow control: a
`send` waits while the client is slow to read (bounded, never dropped), `receive` raises
`trio.EndOfChannel` when the client has finished sending. A streaming method ends the call by
returning; it is cancelled when the client cancels, and when the node drains (the client then
gets UNAVAILABLE).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

import trio

from node.rpc.model import (
    AcquireUpdate,
    CapabilitySnapshot,
    DevicePage,
    DeviceQuery,
    DeviceRecord,
    DeviceRegistration,
    DeviceUpdate,
    DiscoverQuery,
    HeartbeatResult,
    LeaseInfo,
    LockChange,
    LockPage,
    LockQuery,
    LockRequest,
    Principal,
    Registered,
    SendResult,
    StatusEvent,
    StatusWatch,
)


class Authenticator(Protocol):
    """Turns a bearer token into a `Principal`; called before any handler runs."""

    async def authenticate(self, token: str) -> Principal:
        """Validate `token` (the text after "Bearer ").

        Raises:
            Unauthenticated: unknown, expired or revoked token. A local authenticator that does
                not know a token should raise it with `reason="unknown-token"`, so that a chained
                external check (Heimdall) is consulted for that token and only for that.
        """
        ...


class RpcBackend(Protocol):
    """What the gRPC services need from the node; `principal` is the authenticated caller."""

    async def register_device(self, principal: Principal, req: DeviceRegistration) -> Registered:
        """Register (or re-register) a device."""
        ...

    def get_device(self, principal: Principal, device_id: str) -> DeviceRecord | Awaitable[DeviceRecord]:
        """One device; NotFound when unknown or out of the caller's scope."""
        ...

    def list_devices(self, principal: Principal, query: DeviceQuery) -> DevicePage | Awaitable[DevicePage]:
        """A page of devices ordered by id."""
        ...

    async def update_device(self, principal: Principal, update: DeviceUpdate) -> DeviceRecord:
        """Change a device; returns the new record."""
        ...

    async def unregister_device(self, principal: Principal, device_id: str) -> bool:
        """Remove a device; False when it did not exist."""
        ...

    async def heartbeat(self, principal: Principal, device_id: str) -> HeartbeatResult:
        """Record a heartbeat."""
        ...

    async def discover(self, principal: Principal, query: DiscoverQuery) -> tuple[DeviceRecord, ...]:
        """Devices offering all the capabilities, ordered by id."""
        ...

    async def watch_status(
        self, principal: Principal, query: StatusWatch, events: trio.abc.SendChannel[StatusEvent]
    ) -> None:
        """Send status changes into `events` until cancelled."""
        ...

    def send(self, principal: Principal, frame: bytes) -> SendResult | Awaitable[SendResult]:
        """Route one device frame (docs/protocol.md) and report the outcome (or an awaitable of it)."""
        ...

    async def connect(
        self,
        principal: Principal,
        frames_in: trio.abc.ReceiveChannel[bytes],
        frames_out: trio.abc.SendChannel[bytes],
    ) -> None:
        """Run a device session: frames from the client arrive on `frames_in` (EndOfChannel
        when it stops sending); frames for it go to `frames_out`. Return to end the session."""
        ...

    def capabilities(
        self, principal: Principal, network_id: str | None
    ) -> CapabilitySnapshot | Awaitable[CapabilitySnapshot]:
        """The node's capabilities as seen by the caller."""
        ...

    async def watch_capabilities(
        self,
        principal: Principal,
        network_id: str | None,
        snapshots: trio.abc.SendChannel[CapabilitySnapshot],
    ) -> None:
        """Send the current snapshot, then a new one after each change, until cancelled."""
        ...

    async def acquire_lock(
        self, principal: Principal, req: LockRequest, updates: trio.abc.SendChannel[AcquireUpdate]
    ) -> None:
        """Send queued*, then granted or refused; after granted, the way the lease ended.
        Cancellation before the grant withdraws the request; after it, the lease stays."""
        ...

    async def release_lock(self, principal: Principal, resource: str, fencing_token: int) -> bool:
        """Release a lease; False when it had already ended."""
        ...

    async def refresh_lock(
        self, principal: Principal, resource: str, fencing_token: int, lease_s: float | None
    ) -> LeaseInfo:
        """Extend a lease (None: by its original length); NotFound when it has ended."""
        ...

    def list_locks(self, principal: Principal, query: LockQuery) -> LockPage | Awaitable[LockPage]:
        """A page of lock states ordered by resource."""
        ...

    async def watch_locks(
        self, principal: Principal, prefix: str, events: trio.abc.SendChannel[LockChange]
    ) -> None:
        """Send lock events for resources starting with `prefix` until cancelled."""
        ...
