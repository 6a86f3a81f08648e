"""/api/v1/tokens, /api/v1/admin/*, /healthz, /readyz, /metrics."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response
from quart_schema import (
    document_response,
    hide,
    security_scheme,
    tag,
    validate_querystring,
    validate_request,
    validate_response,
)

import node
from node.api._common import problems
from node.api._metrics import render_metrics
from node.api._schemas import (
    AuditOut,
    AuditPage,
    AuditQuery,
    HealthOut,
    LogsOut,
    LogsQuery,
    PlainText,
    StatsOut,
    TokenCreated,
    TokenIn,
    TokenList,
    TokenOut,
)
from node.api._security import ctx, principal
from node.auth import Action, Role
from node.errors import PermissionDenied
from node.registry import _validate as v

bp = Blueprint("admin", __name__)


def _admin() -> None:
    principal().require(Action.ADMIN)


# ---------------------------------------------------------------- tokens


@bp.get("/api/v1/tokens")
@tag(["tokens"])
@problems()
@validate_response(TokenList)
async def list_tokens() -> TokenList:
    """Every token (never the secret). Admin only."""
    _admin()
    return TokenList(items=[TokenOut.of(t) for t in ctx().tokens.list()])


@bp.post("/api/v1/tokens")
@tag(["tokens"])
@problems()
@validate_request(TokenIn)
@validate_response(TokenCreated, 201)
async def create_token(data: TokenIn) -> tuple[TokenCreated, int, dict[str, str]]:
    """Create a token; the secret is in this response only. Admin only."""
    _admin()
    c = ctx()
    expires = c.clock.now() + data.expires_in_s if data.expires_in_s else None
    secret, row = await c.tokens.create(
        name=data.name,
        role=Role(data.role),
        device_id=v.uuid_id(data.device_id, "device_id") if data.device_id else None,
        networks=v.uuid_list(data.networks, "networks"),
        expires_at=expires,
    )
    out = TokenCreated(token=secret, **TokenOut.of(row).model_dump())
    return out, 201, {"Location": f"/api/v1/tokens/{row.token_id}"}


@bp.get("/api/v1/tokens/<token_id>")
@tag(["tokens"])
@problems()
@validate_response(TokenOut)
async def get_token(token_id: str) -> TokenOut:
    """One token. Admin only."""
    _admin()
    return TokenOut.of(ctx().tokens.get(token_id[:64]))


@bp.delete("/api/v1/tokens/<token_id>")
@tag(["tokens"])
@problems(409)
@validate_response(TokenOut)
async def revoke_token(token_id: str) -> TokenOut:
    """Revoke a token; effective on its next request. Admin only."""
    _admin()
    return TokenOut.of(await ctx().tokens.revoke(token_id[:64]))


# ---------------------------------------------------------------- admin


@bp.get("/api/v1/admin/stats")
@tag(["admin"])
@problems()
@validate_response(StatsOut)
async def stats() -> StatsOut:
    """Uptime, device counts by status, store size and per-service figures. Admin only."""
    _admin()
    c = ctx()
    services: dict[str, Any] = {name: provider() for name, provider in c.stats_providers.items()}
    return StatsOut(
        node_id=c.node_id,
        version=node.__version__,
        uptime_s=round(c.clock.now() - c.started_at, 3),
        store_bytes=c.storage.size_bytes(),
        services=services,
    )


@bp.get("/api/v1/admin/logs")
@tag(["admin"])
@problems()
@validate_querystring(LogsQuery)
@validate_response(LogsOut)
async def logs(query_args: LogsQuery) -> LogsOut:
    """Recent structured log records, newest first. Admin only."""
    _admin()
    total, items = ctx().logs.ring.query(
        min_level=query_args.level, limit=query_args.limit, offset=query_args.offset
    )
    return LogsOut(total=total, items=items)


@bp.get("/api/v1/admin/audit")
@tag(["admin"])
@problems()
@validate_querystring(AuditQuery)
@validate_response(AuditPage)
async def audit(query_args: AuditQuery) -> AuditPage:
    """The audit log, newest first (state-changing requests and auth failures). Admin only."""
    _admin()
    c = ctx()
    await c.audit.flush()
    rows = c.audit.query(
        actor=query_args.actor,
        action=query_args.action,
        outcome=query_args.outcome,
        before_id=query_args.before,
        limit=query_args.limit,
    )
    return AuditPage(items=[AuditOut.of(e) for e in rows])


# ---------------------------------------------------------------- health and metrics


@bp.get("/healthz")
@tag(["health"])
@security_scheme([])
@document_response(HealthOut, 200)
async def healthz() -> tuple[dict[str, Any], int]:
    """Liveness: the process serves requests. No token needed."""
    return {"status": "ok" if ctx().state != "stopping" else "stopping"}, 200


@bp.get("/readyz")
@tag(["health"])
@security_scheme([])
@document_response(HealthOut, 200)
@document_response(HealthOut, 503)
async def readyz() -> tuple[dict[str, Any], int]:
    """Readiness: every service is up. No token needed; 503 while starting or stopping."""
    c = ctx()
    return {"status": c.state, "node_id": c.node_id}, 200 if c.state == "ok" else 503


@bp.get("/metrics")
@tag(["health"])
@problems()
@document_response(PlainText, 200)
async def metrics() -> Response:
    """Prometheus text exposition of the node's counters. Tokens not limited to networks only (the
    figures are node-wide)."""
    who = principal()
    who.require(Action.READ)
    if who.scope is not None:
        raise PermissionDenied("node-wide metrics need a token that is not limited to networks")
    return Response(render_metrics(ctx()), content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/docs")
@hide
async def docs() -> Response:
    """The API reference as one HTML page, rendered from /openapi.json (no external scripts)."""
    from node.api._docs import render_docs

    return Response(render_docs(), content_type="text/html; charset=utf-8")
