"""Per-request security: rate limits (per IP, then per token), bearer auth, CORS, audit, headers."""

from __future__ import annotations

import secrets
from typing import cast

from quart import Response, current_app, g, request

from node.api._context import ApiContext
from node.api._problems import problem
from node.auth import Principal
from node.errors import Unauthenticated
from node.ratelimit import Decision

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
DOC_PATHS = frozenset({"/openapi.json", "/docs"})


def ctx() -> ApiContext:
    return cast(ApiContext, current_app.config["ASGARD"])


def principal() -> Principal:
    """The authenticated caller of this request."""
    return cast(Principal, g.principal)


def client_ip() -> str:
    return request.remote_addr or "unknown"


def bearer_token(header: str) -> str:
    """The token of an `Authorization: Bearer <token>` header.

    Raises:
        Unauthenticated: missing header or another scheme.
    """
    if not header:
        raise Unauthenticated("missing bearer token (Authorization: Bearer asg_...)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("expected 'Authorization: Bearer <token>'")
    return token.strip()


def _rate_headers(decision: Decision) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_s),
    }


def _limited(decision: Decision) -> Response:
    headers = _rate_headers(decision) | {"Retry-After": str(decision.retry_after_s)}
    return problem(
        429,
        f"rate limit exceeded; retry after {decision.retry_after_s} s",
        code="rate-limited",
        headers=headers,
    )


def _is_public() -> bool:
    if request.path in PUBLIC_PATHS or request.method == "OPTIONS":
        return True
    return request.path in DOC_PATHS and ctx().settings.api.public_docs


async def before_request() -> Response | None:
    """Runs before every handler (and before body validation)."""
    c = ctx()
    g.request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(8)
    g.principal = None
    now = c.clock.now()
    decision = c.ip_limiter.take(client_ip(), now)
    g.rate = decision
    if not decision.allowed:
        return _limited(decision)
    if _is_public():
        return None
    try:
        who = c.tokens.authenticate(bearer_token(request.headers.get("Authorization", "")))
    except Unauthenticated as exc:
        c.audit.record(
            actor="anonymous",
            action="auth.failure",
            target=request.path,
            outcome="denied",
            status=401,
            client=client_ip(),
            detail=exc.detail,
        )
        return problem(401, exc.detail, code=exc.code, headers={"WWW-Authenticate": 'Bearer realm="asgard"'})
    g.principal = who
    decision = c.token_limiter.take(who.token_id, now)
    if decision.remaining < g.rate.remaining or not decision.allowed:
        g.rate = decision
    if not decision.allowed:
        return _limited(decision)
    return None


async def after_request(response: Response) -> Response:
    """Adds rate-limit, request-id, security and CORS headers; audits state-changing requests."""
    c = ctx()
    decision: Decision | None = g.get("rate")
    if decision is not None:
        for name, value in _rate_headers(decision).items():
            response.headers.setdefault(name, value)
    response.headers["X-Request-Id"] = g.get("request_id", "")
    if _body_left_unread():
        # hypercorn closes a connection whose request body was not read; say so, so that the
        # client does not send its next request into a closing connection.
        response.headers["Connection"] = "close"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-store")
    _cors(c, response)
    if request.method in STATE_CHANGING and g.get("principal") is not None:
        who: Principal = g.principal
        status = response.status_code
        outcome = "ok" if status < 400 else "denied" if status in (401, 403, 404, 429) else "error"
        rule = request.url_rule.rule if request.url_rule else request.path
        c.audit.record(
            actor=who.token_id,
            action=f"{request.method} {rule}",
            target=request.path,
            outcome=outcome,
            status=status,
            client=client_ip(),
        )
    return response


def _body_left_unread() -> bool:
    announced = request.headers.get("Transfer-Encoding") or request.headers.get("Content-Length", "0") != "0"
    return bool(announced) and not getattr(request, "body_consumed", False)


def _cors(c: ApiContext, response: Response) -> None:
    origin = request.headers.get("Origin")
    if origin and origin in c.settings.api.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
        response.headers["Access-Control-Expose-Headers"] = (
            "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After, Location"
        )
