"""Plain records read from and written to the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    network_id: str
    name: str
    world_type: str
    capabilities: tuple[str, ...]
    hardware_spec: dict[str, Any]
    registered_at: float
    updated_at: float
    last_seen: float
    status: str
    networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Network:
    network_id: str
    name: str
    created_at: float
    owner_device_id: str | None
    device_count: int = 0


@dataclass(frozen=True, slots=True)
class Connection:
    connection_id: str
    source_device_id: str
    target_device_id: str | None
    kind: str
    established_at: float
    last_heartbeat: float
    status: str
    closed_at: float | None


@dataclass(frozen=True, slots=True)
class Token:
    token_id: str
    token_hash: bytes
    name: str
    role: str
    device_id: str | None
    networks: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    outcome: str
    status: int | None
    client: str
    detail: str
