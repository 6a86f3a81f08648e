"""Conversions between `asgard.v1` messages and the plain records of `node.rpc.model`.

Runs on the island. Requests are checked for what only the wire can get wrong (UUID syntax, JSON
text, enum values); the node checks the rest (existence, permissions, limits). Invalid input raises
`node.errors.InvalidInput`, which the gate answers with INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from node.errors import InvalidInput
from node.rpc import model
from protos.gen.asgard import v1 as pb

K = TypeVar("K")
V = TypeVar("V")

DEVICE_STATUS: dict[str, pb.DeviceStatus] = {
    "online": pb.DeviceStatus.ONLINE,
    "inactive": pb.DeviceStatus.INACTIVE,
    "offline": pb.DeviceStatus.OFFLINE,
    "unregistered": pb.DeviceStatus.UNREGISTERED,
}
DEVICE_STATUS_NAME: dict[pb.DeviceStatus, model.DeviceStatusName] = {
    pb.DeviceStatus.ONLINE: "online",
    pb.DeviceStatus.INACTIVE: "inactive",
    pb.DeviceStatus.OFFLINE: "offline",
    pb.DeviceStatus.UNREGISTERED: "unregistered",
}
DELIVERY_STATUS = {
    "delivered": pb.DeliveryStatus.DELIVERED,
    "queued": pb.DeliveryStatus.QUEUED,
    "forwarded": pb.DeliveryStatus.FORWARDED,
}
SERVICE_STATE = {
    "running": pb.ServiceState.RUNNING,
    "degraded": pb.ServiceState.DEGRADED,
    "stopped": pb.ServiceState.STOPPED,
    "disabled": pb.ServiceState.DISABLED,
}


def timestamp(seconds: float) -> datetime:
    """Unix seconds → an aware UTC datetime (betterproto2's google.protobuf.Timestamp)."""
    return datetime.fromtimestamp(seconds, UTC)


def seconds(value: datetime | None) -> float:
    """An aware datetime → Unix seconds (0 when absent)."""
    return 0.0 if value is None else value.timestamp()


def check_uuid(value: str, field: str) -> str:
    """`value` in canonical lowercase form, or InvalidInput."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(f"{field} must be a UUID", field=field) from None


def optional_uuid(value: str, field: str) -> str | None:
    """An empty string means "not set"."""
    return check_uuid(value, field) if value else None


def uuids(values: list[str], field: str) -> tuple[str, ...]:
    """Every value checked and canonical."""
    return tuple(check_uuid(v, field) for v in values)


def json_object(text: str, field: str) -> dict[str, Any]:
    """Parse a JSON object given as text ("" means {})."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInput(f"{field} must be JSON text", field=field) from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", field=field)
    return value


def enum_name(table: dict[K, V], value: K, field: str) -> V:
    """Look an enum value up, InvalidInput for values outside the table."""
    try:
        return table[value]
    except KeyError:
        raise InvalidInput(f"{field} has an unknown value", field=field) from None


def positive_or_none(value: int) -> int | None:
    """Proto3's 0 means "not set"."""
    return value or None


def device(record: model.DeviceRecord) -> pb.Device:
    """A device record as a message."""
    return pb.Device(
        device_id=record.device_id,
        network_id=record.network_id,
        world_type=record.world_type,
        capabilities=list(record.capabilities),
        hardware_spec_json=json.dumps(record.hardware_spec, separators=(",", ":"), sort_keys=True),
        registered_at=timestamp(record.registered_at),
        last_seen=timestamp(record.last_seen),
        status=DEVICE_STATUS[record.status],
        networks=list(record.networks),
        name=record.name,
        updated_at=timestamp(record.updated_at),
    )
