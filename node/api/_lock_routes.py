"""/api/v1/locks: inspection for every role, force-release for admins."""

from __future__ import annotations

from datetime import datetime

import trio
from pydantic import BaseModel, Field
from quart import Blueprint
from quart_schema import tag, validate_querystring, validate_response

from node.api._common import problems
from node.api._schemas import Query, ts
from node.api._security import ctx, principal
from node.auth import Action
from node.errors import InvalidInput, Unavailable
from node.locks import Lease, LockService, ResourceView

bp = Blueprint("locks", __name__, url_prefix="/api/v1/locks")

MAX_RESOURCE_CHARS = 256


class LeaseOut(BaseModel):
    token: int = Field(description="Fencing token: protected resources must refuse lower ones.")
    owner: str
    session: str
    mode: str
    priority: int
    lease_s: float
    granted_at: datetime
    expires_at: datetime


class WaiterOut(BaseModel):
    owner: str
    mode: str
    priority: int
    position: int


class LockOut(BaseModel):
    resource: str
    holders: list[LeaseOut]
    waiters: list[WaiterOut]
    last_token: int


class LockList(BaseModel):
    items: list[LockOut]


class ReleaseQuery(Query):
    token: int | None = Field(None, ge=1, description="Release only this lease; default: every holder.")


class Released(BaseModel):
    released: list[LeaseOut]


def _service() -> LockService:
    service: LockService | None = ctx().locks
    if service is None:
        raise Unavailable("the lock service is not running")
    return service


def _wall(monotonic: float) -> datetime:
    """A time on Trio's clock as a wall-clock datetime."""
    c = ctx()
    value = ts(c.clock.now() + (monotonic - trio.current_time()))
    assert value is not None
    return value


def _lease(lease: Lease) -> LeaseOut:
    return LeaseOut(
        token=lease.token,
        owner=lease.owner,
        session=lease.session,
        mode=lease.mode.value,
        priority=lease.priority,
        lease_s=lease.lease_s,
        granted_at=_wall(lease.granted_at),
        expires_at=_wall(lease.expires_at),
    )


def _view(view: ResourceView) -> LockOut:
    return LockOut(
        resource=view.resource,
        holders=[_lease(h) for h in view.holders],
        waiters=[
            WaiterOut(owner=w.owner, mode=w.mode.value, priority=w.priority, position=i)
            for i, w in enumerate(view.waiters)
        ],
        last_token=view.last_token,
    )


def _resource(name: str) -> str:
    if not name or len(name) > MAX_RESOURCE_CHARS:
        raise InvalidInput(f"resource: 1 to {MAX_RESOURCE_CHARS} characters")
    return name


@bp.get("")
@tag(["locks"])
@problems()
@validate_response(LockList)
async def list_locks() -> LockList:
    """Every resource with holders or waiters."""
    principal().require(Action.READ)
    return LockList(items=[_view(v) for v in _service().list()])


@bp.get("/<path:resource>")
@tag(["locks"])
@problems()
@validate_response(LockOut)
async def get_lock(resource: str) -> LockOut:
    """One resource (404 when nobody holds or waits for it)."""
    principal().require(Action.READ)
    return _view(await _service().get(_resource(resource)))


@bp.delete("/<path:resource>")
@tag(["locks"])
@problems()
@validate_querystring(ReleaseQuery)
@validate_response(Released)
async def force_release(resource: str, query_args: ReleaseQuery) -> Released:
    """Admin: revoke a lease (or every holder); the holders are notified and their tokens are stale."""
    principal().require(Action.ADMIN)
    leases = await _service().force_release(_resource(resource), query_args.token)
    return Released(released=[_lease(lease) for lease in leases])
