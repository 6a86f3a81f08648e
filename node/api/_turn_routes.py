"""/api/v1/turn: short-lived TURN credentials for devices, and TURN users for admins."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from quart import Blueprint, Response
from quart_schema import document_response, tag, validate_request, validate_response

from node.api._common import no_content, problems
from node.api._schemas import Body, NoContent, ts
from node.api._security import ctx, principal
from node.auth import Action
from node.errors import Unavailable
from node.turn import TurnService
from node.turn.store_users import StoreUsers

bp = Blueprint("turn", __name__, url_prefix="/api/v1/turn")


class CredentialIn(Body):
    ttl_s: int | None = Field(None, ge=60, le=86_400, description="Lifetime; default turn.credential_ttl_s.")


class CredentialOut(BaseModel):
    """The shape WebRTC apps expect (TURN REST API: username `expiry:user`, HMAC password)."""

    username: str
    password: str
    ttl: int
    expires_at: int = Field(description="Unix time after which the server refuses it.")
    realm: str
    uris: list[str] = Field(description="stun: and turn: URIs to put in an RTCIceServer.")


class UserIn(Body):
    password: str = Field(min_length=12, max_length=256, description="Only derived keys are stored.")


class UserOut(BaseModel):
    username: str
    realm: str
    created_at: datetime


class UserList(BaseModel):
    items: list[UserOut]


def _service() -> TurnService:
    service: TurnService | None = ctx().turn
    if service is None:
        raise Unavailable("the TURN service is not running (turn.enabled = false)")
    return service


def _users() -> StoreUsers:
    users: StoreUsers | None = ctx().turn_users
    if users is None:
        raise Unavailable("the TURN service is not running (turn.enabled = false)")
    return users


@bp.post("/credentials")
@tag(["turn"])
@problems(503)
@validate_request(CredentialIn)
@validate_response(CredentialOut)
async def credentials(data: CredentialIn) -> CredentialOut:
    """A short-lived TURN credential for the calling device (or token) and the URIs to use it with."""
    who = principal()
    who.require(Action.ROUTE)
    issued = _service().issue_credential(who.device_id or who.token_id, ttl_s=data.ttl_s)
    return CredentialOut(
        username=issued.username,
        password=issued.password,
        ttl=issued.ttl_s,
        expires_at=issued.expires_at,
        realm=issued.realm,
        uris=list(issued.uris),
    )


@bp.get("/users")
@tag(["turn"])
@problems(503)
@validate_response(UserList)
async def list_users() -> UserList:
    """TURN long-term users kept in the store (config-file users are not listed). Admin only."""
    principal().require(Action.ADMIN)
    return UserList(
        items=[
            UserOut(username=u.username, realm=u.realm, created_at=ts(u.created_at)) for u in _users().list()
        ]
    )


@bp.put("/users/<username>")
@tag(["turn"])
@problems(503)
@validate_request(UserIn)
@validate_response(UserOut)
async def put_user(username: str, data: UserIn) -> UserOut:
    """Create or replace a TURN long-term user in this node's realm. Admin only."""
    principal().require(Action.ADMIN)
    user = await _users().put(username, _service().realm, data.password)
    return UserOut(username=user.username, realm=user.realm, created_at=ts(user.created_at))


@bp.delete("/users/<username>")
@tag(["turn"])
@problems(503)
@document_response(NoContent, 204)
async def delete_user(username: str) -> Response:
    """Remove a TURN user; its allocations end when they next need to authenticate. Admin only."""
    principal().require(Action.ADMIN)
    await _users().delete(username, _service().realm)
    return no_content()
