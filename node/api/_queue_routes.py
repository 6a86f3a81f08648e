"""/api/v1/devices/:id/queue: a device's offline queue of DURABLE messages (depth, purge)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from quart import Blueprint
from quart_schema import tag, validate_response

from node.api._common import problems
from node.api._schemas import ts
from node.api._security import ctx, principal
from node.auth import Action, Principal, Role
from node.errors import PermissionDenied
from store import queue as q

bp = Blueprint("queue", __name__, url_prefix="/api/v1")


class QueueOut(BaseModel):
    """A device's offline queue."""

    device_id: str
    depth: int = Field(description="Messages waiting for the device (not yet confirmed with DELIVERED).")
    bytes: int = Field(description="Their size (whole frames).")
    oldest: datetime | None = Field(description="When the oldest waiting message was queued.")


class QueuePurgedOut(BaseModel):
    """What a purge removed."""

    device_id: str
    purged: int
    bytes: int


@bp.get("/devices/<device_id>/queue")
@tag(["devices"])
@problems()
@validate_response(QueueOut)
async def get_queue(device_id: str) -> QueueOut:
    """The device's offline queue: depth, bytes and the oldest message's age."""
    device = ctx().registry.get_device(principal(), device_id)
    depth = ctx().storage.read(q.depth, device.device_id)
    return QueueOut(
        device_id=device.device_id, depth=depth.messages, bytes=depth.bytes, oldest=ts(depth.oldest_at)
    )


@bp.delete("/devices/<device_id>/queue")
@tag(["devices"])
@problems()
@validate_response(QueuePurgedOut)
async def purge_queue(device_id: str) -> QueuePurgedOut:
    """Delete every message waiting in the device's offline queue (they are never delivered)."""
    who = principal()
    device = ctx().registry.get_device(who, device_id)
    _require_write(who, device.device_id)
    messages, size = await ctx().storage.write(q.purge_device, device.device_id)
    return QueuePurgedOut(device_id=device.device_id, purged=messages, bytes=size)


def _require_write(who: Principal, device_id: str) -> None:
    """Admins and services may purge any visible queue; a device token only its own."""
    if who.allows(Action.WRITE_REGISTRY):
        return
    who.require(Action.WRITE_SELF)
    if who.role is Role.DEVICE and who.device_id != device_id:
        raise PermissionDenied("a device token may only purge its own queue")
