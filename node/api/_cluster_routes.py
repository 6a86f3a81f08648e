"""GET /api/v1/cluster: the mesh as this node sees it (members, links, leader and term)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from quart import Blueprint
from quart_schema import tag, validate_response

from node.api._common import problems
from node.api._security import ctx, principal
from node.auth import Role
from node.errors import PermissionDenied

bp = Blueprint("cluster", __name__)

STANDALONE = "standalone: this node is its own leader"


class ClusterOut(BaseModel):
    node_id: str
    cluster_id: str | None
    mesh: bool
    mode: str
    leader: str | None
    term: int | None
    is_leader: bool
    detail: str
    members: list[dict[str, Any]]
    links: list[dict[str, Any]]


@bp.get("/api/v1/cluster")
@tag(["cluster"])
@problems()
@validate_response(ClusterOut)
async def cluster() -> ClusterOut:
    """Members, peer links (health, round-trip time), leader and term. Admin or viewer."""
    if principal().role not in (Role.ADMIN, Role.VIEWER):
        raise PermissionDenied("the cluster view needs an admin or viewer token")
    c = ctx()
    mesh = c.stats_providers.get("mesh")
    election = c.stats_providers.get("election")
    seen: dict[str, Any] = mesh() if mesh is not None else {}
    status: dict[str, Any] = election() if election is not None else {}
    mode = str(status.get("mode", "standalone"))
    leader: str | None = c.node_id
    if mode == "standalone" or not status:
        term, is_leader, detail = status.get("term"), True, str(status.get("detail") or STANDALONE)
    else:
        leader, term = status.get("leader"), status.get("term")
        is_leader = bool(status.get("is_leader"))
        detail = str(status.get("detail") or ("this node leads" if is_leader else f"leader: {leader}"))
    return ClusterOut(
        node_id=c.node_id,
        cluster_id=seen.get("cluster_id"),
        mesh=mesh is not None,
        mode=mode,
        leader=leader,
        term=term,
        is_leader=is_leader,
        detail=detail,
        members=seen.get("members", [{"node_id": c.node_id, "self": True, "linked": False}]),
        links=seen.get("links", []),
    )
