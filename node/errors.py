"""The node's error tree. Each boundary (HTTP, gRPC, WebSocket) maps these once."""

from __future__ import annotations

from typing import Any, ClassVar


class NodeError(Exception):
    """An error with a stable machine-readable code and its mapping to every surface.

    `code` is the stable slug used in problem-details `type` URIs, gRPC details and nack reasons.
    """

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[str] = "INTERNAL"
    ws_close: ClassVar[int] = 1011
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(NodeError):
    code = "invalid-input"
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"
    ws_close = 1008
    title = "Invalid input"


class Unauthenticated(NodeError):
    code = "unauthenticated"
    http_status = 401
    grpc_status = "UNAUTHENTICATED"
    ws_close = 1008
    title = "Authentication required"


class PermissionDenied(NodeError):
    code = "permission-denied"
    http_status = 403
    grpc_status = "PERMISSION_DENIED"
    ws_close = 1008
    title = "Permission denied"


class NotFound(NodeError):
    code = "not-found"
    http_status = 404
    grpc_status = "NOT_FOUND"
    ws_close = 1008
    title = "Not found"


class Conflict(NodeError):
    code = "conflict"
    http_status = 409
    grpc_status = "ALREADY_EXISTS"
    ws_close = 1008
    title = "Conflict"


class TooLarge(NodeError):
    code = "too-large"
    http_status = 413
    grpc_status = "RESOURCE_EXHAUSTED"
    ws_close = 1009
    title = "Too large"


class ResourceExhausted(NodeError):
    """A quota, rate or queue limit was hit."""

    code = "resource-exhausted"
    http_status = 429
    grpc_status = "RESOURCE_EXHAUSTED"
    ws_close = 1008
    title = "Limit reached"


class Unavailable(NodeError):
    code = "unavailable"
    http_status = 503
    grpc_status = "UNAVAILABLE"
    ws_close = 1013
    title = "Service unavailable"


class Aborted(NodeError):
    """An operation gave up or was overtaken (a lock wait timed out, a lease was lost meanwhile)."""

    code = "aborted"
    http_status = 409
    grpc_status = "ABORTED"
    ws_close = 1008
    title = "Aborted"


class Deadlock(NodeError):
    """A lock wait was aborted to break a deadlock."""

    code = "deadlock"
    http_status = 409
    grpc_status = "ABORTED"
    ws_close = 1008
    title = "Deadlock"


class StoreError(NodeError):
    """The store failed (apsw errors are mapped to this once, in `node.storage`)."""

    code = "store-error"
    http_status = 503
    grpc_status = "UNAVAILABLE"
    ws_close = 1011
    title = "Store error"
