"""Errors as RFC 9457 problem details, mapped once for the whole API."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from quart import Response, request
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from node.errors import NodeError

PROBLEM_TYPE = "urn:asgard:problem:"
CONTENT_TYPE = "application/problem+json"

HTTP_CODES = {
    400: "invalid-input",
    401: "unauthenticated",
    403: "permission-denied",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    429: "rate-limited",
    500: "internal",
    503: "unavailable",
}


def problem(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + (code or HTTP_CODES.get(status, "error")),
        "title": title or (code or HTTP_CODES.get(status, "error")).replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
        "instance": request.path,
    }
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, content_type=CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def from_node_error(exc: NodeError) -> Response:
    return problem(exc.http_status, exc.detail, code=exc.code, title=exc.title)


def from_validation(exc: RequestSchemaValidationError) -> Response:
    inner = exc.validation_error
    if isinstance(inner, ValidationError):
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in inner.errors(include_url=False, include_input=False)
        ]
        detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors[:5])
        return problem(400, detail, code="invalid-input", errors=errors)
    if isinstance(inner, TypeError | ValueError):
        return problem(400, f"request body: {inner}", code="invalid-input")
    return problem(400, "request body: expected a JSON object", code="invalid-input")


def from_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    detail = {
        404: f"no such endpoint: {request.path}",
        405: f"method {request.method} not allowed on {request.path}",
        413: "request body too large",
    }.get(status, exc.description or "")
    methods = getattr(exc, "valid_methods", None)
    headers = {"Allow": ", ".join(methods)} if status == 405 and methods else None
    return problem(status, detail, headers=headers)
