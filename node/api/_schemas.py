"""Request and response models of the REST API. quart-schema validates requests with them and
generates /openapi.json from them, so the spec cannot drift from the code."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from store import records

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
CAPABILITY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"

Status = Literal["online", "inactive", "offline"]


class Body(BaseModel):
    """Request bodies: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class NoContent:
    """No content."""


class PlainText:
    """Plain text (Prometheus exposition format)."""


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="Stable URI naming the kind of problem, e.g. urn:asgard:problem:not-found.")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="Per-field validation errors.")


# ---------------------------------------------------------------- devices


class DeviceIn(Body):
    device_id: str = Field(pattern=UUID_PATTERN, description="The device's UUID (chosen by the device).")
    network_id: str = Field(pattern=UUID_PATTERN, description="Primary network.")
    world_type: str = Field(min_length=1, max_length=32, description="One of the configured world types.")
    name: str = Field("", max_length=128)
    capabilities: list[str] = Field(default_factory=list, max_length=4096)
    hardware_spec: dict[str, Any] = Field(default_factory=dict)
    move: bool = Field(False, description="Allow moving an existing device to another primary network.")


class DevicePut(Body):
    name: str = Field(max_length=128)
    world_type: str = Field(min_length=1, max_length=32)
    capabilities: list[str] = Field(max_length=4096)
    hardware_spec: dict[str, Any]


class DevicePatchIn(Body):
    name: str | None = Field(None, max_length=128)
    world_type: str | None = Field(None, min_length=1, max_length=32)
    capabilities: list[str] | None = Field(None, max_length=4096)
    hardware_spec: dict[str, Any] | None = None


class DeviceOut(BaseModel):
    device_id: str
    network_id: str | None = Field(
        description="Primary network; null when it is outside your token's networks."
    )
    networks: list[str]
    name: str
    world_type: str
    capabilities: list[str]
    hardware_spec: dict[str, Any]
    registered_at: datetime
    updated_at: datetime
    last_seen: datetime
    status: Status

    @classmethod
    def of(cls, d: records.Device) -> DeviceOut:
        return cls(
            device_id=d.device_id,
            network_id=d.network_id or None,
            networks=list(d.networks),
            name=d.name,
            world_type=d.world_type,
            capabilities=list(d.capabilities),
            hardware_spec=d.hardware_spec,
            registered_at=ts(d.registered_at),
            updated_at=ts(d.updated_at),
            last_seen=ts(d.last_seen),
            status=d.status,
        )


class DevicePage(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class PageQuery(Query):
    limit: int | None = Field(None, ge=1, le=10_000, description="Page size (at most api.page_size_max).")
    cursor: str | None = Field(None, max_length=64, description="`next_cursor` of the previous page.")


class DeviceQuery(PageQuery):
    network_id: str | None = Field(None, pattern=UUID_PATTERN)
    world_type: str | None = Field(None, max_length=32)
    status: Status | None = None
    capability: str | None = Field(None, max_length=256)


# ---------------------------------------------------------------- networks


class NetworkIn(Body):
    name: str = Field(min_length=1, max_length=128)
    owner_device_id: str | None = Field(None, pattern=UUID_PATTERN)


class NetworkPatch(Body):
    name: str | None = Field(None, min_length=1, max_length=128)
    owner_device_id: str | None = Field(None, pattern=UUID_PATTERN, description="null clears the owner.")


class NetworkOut(BaseModel):
    network_id: str
    name: str
    created_at: datetime
    owner_device_id: str | None
    device_count: int

    @classmethod
    def of(cls, n: records.Network) -> NetworkOut:
        return cls(
            network_id=n.network_id,
            name=n.name,
            created_at=ts(n.created_at),
            owner_device_id=n.owner_device_id,
            device_count=n.device_count,
        )


class NetworkPage(BaseModel):
    items: list[NetworkOut]
    next_cursor: str | None


class DeleteNetworkQuery(Query):
    force: bool = Field(False, description="Delete even though devices remain (see docs).")


class DeleteNetworkOut(BaseModel):
    network_id: str
    unregistered_devices: list[str]


class MemberIn(Body):
    device_id: str = Field(pattern=UUID_PATTERN)


# ---------------------------------------------------------------- connections


class ConnectionIn(Body):
    source_device_id: str = Field(pattern=UUID_PATTERN)
    target_device_id: str | None = Field(None, pattern=UUID_PATTERN, description="null: to this node.")


class ConnectionOut(BaseModel):
    connection_id: str
    source_device_id: str
    target_device_id: str | None
    kind: str
    established_at: datetime
    last_heartbeat: datetime
    status: Literal["open", "closed"]
    closed_at: datetime | None

    @classmethod
    def of(cls, c: records.Connection) -> ConnectionOut:
        return cls(
            connection_id=c.connection_id,
            source_device_id=c.source_device_id,
            target_device_id=c.target_device_id,
            kind=c.kind,
            established_at=ts(c.established_at),
            last_heartbeat=ts(c.last_heartbeat),
            status=c.status,
            closed_at=ts(c.closed_at),
        )


class ConnectionPage(BaseModel):
    items: list[ConnectionOut]
    next_cursor: str | None


class ConnectionQuery(PageQuery):
    device_id: str | None = Field(None, pattern=UUID_PATTERN)
    network_id: str | None = Field(None, pattern=UUID_PATTERN)
    status: Literal["open", "closed"] | None = None


class TopologyOut(BaseModel):
    network: NetworkOut
    devices: list[DeviceOut]
    connections: list[ConnectionOut]


# ---------------------------------------------------------------- tokens and admin


class TokenIn(Body):
    name: str = Field(min_length=1, max_length=128)
    role: Literal["admin", "service", "device", "viewer"]
    device_id: str | None = Field(None, pattern=UUID_PATTERN, description="Device tokens: the device.")
    networks: list[str] = Field(
        default_factory=list, max_length=256, description="Restrict to these networks."
    )
    expires_in_s: int | None = Field(None, ge=60, le=10 * 365 * 86400)


class TokenOut(BaseModel):
    token_id: str
    name: str
    role: str
    device_id: str | None
    networks: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, t: records.Token) -> TokenOut:
        return cls(
            token_id=t.token_id,
            name=t.name,
            role=t.role,
            device_id=t.device_id,
            networks=list(t.networks),
            created_at=ts(t.created_at),
            expires_at=ts(t.expires_at),
            revoked_at=ts(t.revoked_at),
            last_used_at=ts(t.last_used_at),
        )


class TokenCreated(TokenOut):
    token: str = Field(description="The secret token. Shown only once; only its hash is stored.")


class TokenList(BaseModel):
    items: list[TokenOut]


class LogsQuery(Query):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class LogsOut(BaseModel):
    total: int
    items: list[dict[str, Any]]


class AuditQuery(Query):
    actor: str | None = Field(None, max_length=64)
    action: str | None = Field(None, max_length=200)
    outcome: Literal["ok", "denied", "error"] | None = None
    before: int | None = Field(
        None, ge=1, le=2**63 - 1, description="Entries with a smaller id (paging backwards)."
    )
    limit: int = Field(100, ge=1, le=1000)


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    status: int | None
    client: str
    detail: str

    @classmethod
    def of(cls, e: records.AuditEntry) -> AuditOut:
        return cls(
            id=e.id,
            at=ts(e.at),
            actor=e.actor,
            action=e.action,
            target=e.target,
            outcome=e.outcome,
            status=e.status,
            client=e.client,
            detail=e.detail,
        )


class AuditPage(BaseModel):
    items: list[AuditOut]


class StatsOut(BaseModel):
    node_id: str
    version: str
    uptime_s: float
    store_bytes: int
    services: dict[str, Any]


class HealthOut(BaseModel):
    status: Literal["ok", "starting", "stopping"]
    node_id: str | None = None
