"""Plain records the gRPC router exchanges with the node (never generated protobuf messages).

Times are wall-clock Unix seconds (floats), durations are seconds, identifiers are canonical
lowercase UUID strings, statuses are the lowercase names the store uses. The router converts these
to and from the `asgard.v1` messages at its boundary, so the node never imports generated code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DeviceStatusName = Literal["online", "inactive", "offline", "unregistered"]
DeliveryStatusName = Literal["delivered", "queued", "forwarded"]
ServiceStateName = Literal["running", "degraded", "stopped", "disabled"]
LockModeName = Literal["exclusive", "shared"]
AcquireStateName = Literal["queued", "granted", "refused", "released", "expired", "preempted"]
RefusalReasonName = Literal["timeout", "deadlock", "busy", "limit", "unavailable"]
LockEventKindName = Literal["granted", "released", "expired", "preempted", "refused", "refreshed"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: what a validated token stands for."""

    subject: str
    role: Literal["admin", "service", "device", "viewer"]
    networks: tuple[str, ...] = ()
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One registered device (the fields of the store's `devices` row plus memberships)."""

    device_id: str
    network_id: str
    world_type: str
    capabilities: tuple[str, ...]
    hardware_spec: dict[str, Any]
    registered_at: float
    last_seen: float
    status: DeviceStatusName
    networks: tuple[str, ...] = ()
    name: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class DeviceRegistration:
    """RegisterDevice: `device_id` None means the node assigns one."""

    device_id: str | None
    network_id: str
    world_type: str
    capabilities: tuple[str, ...] = ()
    hardware_spec: dict[str, Any] = field(default_factory=dict)
    networks: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class Registered:
    """The result of RegisterDevice."""

    device: DeviceRecord
    created: bool


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """ListDevices filters and paging; None means "no filter" / "the node's default"."""

    network_id: str | None = None
    world_type: str | None = None
    status: DeviceStatusName | None = None
    capability: str | None = None
    page_size: int | None = None
    page_token: str | None = None


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One page of devices; `next_page_token` None on the last page."""

    devices: tuple[DeviceRecord, ...]
    next_page_token: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """UpdateDevice: fields that are None stay unchanged."""

    device_id: str
    network_id: str | None = None
    world_type: str | None = None
    capabilities: tuple[str, ...] | None = None
    hardware_spec: dict[str, Any] | None = None
    networks: tuple[str, ...] | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """The answer to a heartbeat."""

    status: DeviceStatusName
    last_seen: float
    next_heartbeat_s: float


@dataclass(frozen=True, slots=True)
class DiscoverQuery:
    """Discover: devices offering all of `capabilities`."""

    capabilities: tuple[str, ...]
    network_id: str | None = None
    include_offline: bool = False
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class StatusWatch:
    """WatchStatus filters."""

    network_id: str | None = None
    device_ids: tuple[str, ...] = ()
    send_initial: bool = False


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One device status change; `previous` None in initial events."""

    device_id: str
    network_id: str
    status: DeviceStatusName
    previous: DeviceStatusName | None
    at: float


@dataclass(frozen=True, slots=True)
class SendResult:
    """The acknowledgement of a routed frame."""

    message_id: int
    status: DeliveryStatusName
    recipients: int


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One of the node's services."""

    name: str
    state: ServiceStateName
    detail: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class CapabilityCount:
    """One capability and how many devices in scope offer it."""

    name: str
    local: bool = False
    online_devices: int = 0
    devices: int = 0


@dataclass(frozen=True, slots=True)
class CapabilitySnapshot:
    """What the node is and offers, at `as_of`."""

    node_id: str
    version: str
    services: tuple[ServiceStatus, ...]
    capabilities: tuple[CapabilityCount, ...]
    as_of: float
    revision: int


@dataclass(frozen=True, slots=True)
class LockRequest:
    """Acquire: `lease_s` None = default lease; `wait_timeout_s` None = the node's maximum wait,
    0 = try-lock; `holder` None = the caller's identity."""

    resource: str
    mode: LockModeName = "exclusive"
    lease_s: float | None = None
    priority: int = 0
    wait_timeout_s: float | None = None
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A granted lock."""

    resource: str
    mode: LockModeName
    fencing_token: int
    holder: str
    expires_at: float
    priority: int = 0


@dataclass(frozen=True, slots=True)
class AcquireUpdate:
    """One step of an Acquire: queued*, then granted or refused; after granted, how it ended."""

    state: AcquireStateName
    queue_position: int = 0
    lease: LeaseInfo | None = None
    reason: RefusalReasonName | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LockQuery:
    """List locks."""

    prefix: str = ""
    page_size: int | None = None
    page_token: str | None = None


@dataclass(frozen=True, slots=True)
class LockSummary:
    """One resource's lock state."""

    resource: str
    holders: tuple[LeaseInfo, ...]
    waiters: int
    last_fencing_token: int
    cluster: bool = False


@dataclass(frozen=True, slots=True)
class LockPage:
    """One page of locks."""

    locks: tuple[LockSummary, ...]
    next_page_token: str | None = None


@dataclass(frozen=True, slots=True)
class LockChange:
    """One lock event for watchers."""

    kind: LockEventKindName
    resource: str
    lease: LeaseInfo | None
    at: float
    detail: str = ""
