"""The gate every gRPC call passes on the island: drain check, message size limit, authentication,
error mapping and in-flight tracking.

The gate wraps each method's handler, so nothing of a handler runs before the token is checked;
`NodeError`s are mapped to gRPC statuses here and only here (`grpc_status` on the error class; the
error's `code` slug goes out as `asgard-error-code` trailing metadata). grpclib has no message size
setting, so the gate replaces the stream's `recv_message` with one that reads the 5-byte
length prefix first (gRPC over HTTP/2, "Length-Prefixed-Message") and refuses a message larger
than the limit before any of it is buffered or decoded.

Validated tokens are cached on the island for `auth_cache_ttl_s` (keyed by their SHA-256, so the
cache holds no secrets) so the common case costs no hop to Trio: a revoked token keeps working for
at most that long.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import grpclib.const
import grpclib.server
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.exceptions import StreamClosedError

from node.errors import NodeError, Unauthenticated
from node.rpc._bridge import Bridge, DeadlineExceeded, StreamCall
from node.rpc.backend import Authenticator
from node.rpc.model import Principal
from node.rpc.settings import RpcSettings

log = logging.getLogger("asgard.rpc")
T = TypeVar("T")
_PREFIX = struct.Struct(">BI")
ERROR_CODE_KEY = "asgard-error-code"

Stream = grpclib.server.Stream[Any, Any]


class CallContext:
    """What a handler knows about its call: the caller, the deadline and the bridge to Trio."""

    __slots__ = ("_gate", "_stream", "on_drain", "principal")

    def __init__(self, gate: Gate, stream: Stream, principal: Principal | None) -> None:
        self._gate = gate
        self._stream = stream
        self.principal = principal
        self.on_drain: Callable[[], None] | None = None
        """Called when the node starts draining: a long-lived call should end (UNAVAILABLE)."""

    @property
    def draining(self) -> bool:
        """True once the node has started to shut down."""
        return self._gate.draining

    def timeout(self, *, default: float | None) -> float | None:
        """Seconds left of the client's deadline, or `default` when it set none."""
        deadline = self._stream.deadline
        return default if deadline is None else max(0.0, deadline.time_remaining())

    @overload
    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...

    @overload
    async def call(self, fn: Callable[..., T | Awaitable[T]], *args: Any) -> T: ...

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(principal, *args)` in Trio within the call's deadline (see `Bridge.call`)."""
        timeout = self.timeout(default=self._gate.settings.default_call_timeout_s)
        return await self._gate.bridge.call(fn, self.principal, *args, timeout_s=timeout)

    def open_stream(
        self, fn: Callable[..., Awaitable[None]], *args: Any, bidirectional: bool
    ) -> StreamCall[Any, Any]:
        """Start `fn(principal, *args, [in,] out)` in Trio; ended with UNAVAILABLE on drain."""
        call = self._gate.bridge.open_stream(
            fn, self.principal, *args, bidirectional=bidirectional, timeout_s=self.timeout(default=None)
        )
        self.on_drain = call.shutdown
        if self._gate.draining:
            call.shutdown()
        return call


Handler = Callable[[Stream, CallContext], Awaitable[None]]


@dataclass(frozen=True)
class Method:
    """One gRPC method as the gate serves it."""

    name: str
    func: Handler
    cardinality: Cardinality
    request_type: type
    reply_type: type
    public: Callable[[], bool] = lambda: False
    cancel_on_drain: bool = False
    """End the call by cancelling it when the node drains (for handlers not written here)."""


def grpc_error(exc: BaseException) -> GRPCError:
    """Map an exception from a handler or the node to the gRPC error the client gets."""
    exc = _single(exc)
    if isinstance(exc, GRPCError):
        return exc
    if isinstance(exc, NodeError):
        return GRPCError(Status[exc.grpc_status], exc.detail)
    if isinstance(exc, DeadlineExceeded):
        return GRPCError(Status.DEADLINE_EXCEEDED, "deadline exceeded")
    log.error("internal error in a gRPC call", exc_info=exc)
    return GRPCError(Status.INTERNAL, "internal error")


def _single(exc: BaseException) -> BaseException:
    """The one error inside nested single-member exception groups (Trio nurseries make them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Gate:
    """Per-server state of the gate (island thread only, except `apply_settings` via a post)."""

    def __init__(self, bridge: Bridge, authenticator: Authenticator, settings: RpcSettings) -> None:
        self.bridge = bridge
        self.settings = settings
        self._authenticator = authenticator
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._active: dict[asyncio.Task[Any], CallContext | None] = {}
        self.draining = False

    def apply_settings(self, settings: RpcSettings) -> None:
        """Take new live settings (island thread)."""
        self.settings = settings
        self.bridge.max_in_flight = settings.max_in_flight
        if settings.auth_cache_ttl_s == 0:
            self._cache.clear()
        self._trim_cache()

    def handler(self, method: Method) -> grpclib.const.Handler:
        """The grpclib handler that runs `method` behind the gate."""

        async def gated(stream: Stream) -> None:
            await self._run(method, stream)

        return grpclib.const.Handler(gated, method.cardinality, method.request_type, method.reply_type)

    async def _run(self, method: Method, stream: Stream) -> None:
        if self.draining:
            raise GRPCError(Status.UNAVAILABLE, "the node is shutting down")
        _limit_messages(stream, self)
        task = asyncio.current_task()
        assert task is not None
        self._active[task] = None
        try:
            principal = None if method.public() else await self._authenticate(stream)
            context = CallContext(self, stream, principal)
            if method.cancel_on_drain:
                context.on_drain = functools.partial(_cancel_task, task)
            self._active[task] = context
            await method.func(stream, context)
        except (GRPCError, asyncio.CancelledError, StreamTerminatedError):
            raise  # grpclib answers these itself (or the client is gone)
        except StreamClosedError:
            log.debug("%s: the client closed the stream", method.name)
        except Exception as exc:
            await _fail(stream, exc)
        finally:
            del self._active[task]

    async def _authenticate(self, stream: Stream) -> Principal:
        token = _bearer_token(stream)
        key = hashlib.sha256(token.encode()).digest()
        now = asyncio.get_running_loop().time()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            principal = await self.bridge.call(
                self._authenticator.authenticate, token, timeout_s=self.settings.auth_timeout_s
            )
        except DeadlineExceeded:
            raise GRPCError(Status.UNAVAILABLE, "the token check timed out") from None
        if self.settings.auth_cache_ttl_s > 0:
            self._cache[key] = (now + self.settings.auth_cache_ttl_s, principal)
            self._cache.move_to_end(key)
            self._trim_cache()
        return principal

    def _trim_cache(self) -> None:
        while len(self._cache) > self.settings.auth_cache_max_entries:
            self._cache.popitem(last=False)

    async def drain(self, grace_s: float) -> None:
        """Refuse new calls, end streams with UNAVAILABLE, give unary calls up to `grace_s`."""
        self.draining = True
        for context in list(self._active.values()):
            if context is not None and context.on_drain is not None:
                context.on_drain()
        pending = set(self._active)
        if pending and grace_s > 0:
            await asyncio.wait(pending, timeout=grace_s)

    def active_calls(self) -> int:
        """Calls currently inside the gate."""
        return len(self._active)


def _cancel_task(task: asyncio.Task[Any]) -> None:
    task.cancel()


def _bearer_token(stream: Stream) -> str:
    assert stream.metadata is not None
    values = stream.metadata.getall("authorization", [])
    if len(values) != 1 or not isinstance(values[0], str):
        raise GRPCError(Status.UNAUTHENTICATED, "one 'authorization: Bearer <token>' entry is required")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise GRPCError(Status.UNAUTHENTICATED, "authorization must be 'Bearer <token>'")
    return token


async def _fail(stream: Stream, exc: Exception) -> None:
    """Send the mapped status (and the error code slug) as trailers; stream errors are moot."""
    error = grpc_error(exc)
    code = _single(exc)
    metadata = {ERROR_CODE_KEY: code.code} if isinstance(code, NodeError) else None
    try:
        await stream.send_trailing_metadata(
            status=error.status, status_message=error.message, metadata=metadata
        )
    except (StreamClosedError, grpclib.exceptions.ProtocolError, StreamTerminatedError):
        log.debug("could not send the error status: the stream is closed")


def _limit_messages(stream: Stream, gate: Gate) -> None:
    async def recv_message() -> Any:
        return await _recv_limited(stream, gate.settings.max_message_bytes)

    stream.recv_message = recv_message  # type: ignore[method-assign]


async def _recv_limited(stream: Stream, max_bytes: int) -> Any:
    # grpclib 0.4 internals: `_stream` is the HTTP/2 stream, `_codec`/`_recv_type` decode.
    h2_stream = stream._stream
    try:
        prefix = await h2_stream.recv_data(_PREFIX.size)
        if not prefix:
            return None
        compressed, length = _PREFIX.unpack(prefix)
        if compressed:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
        if length > max_bytes:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {length} bytes is larger than the limit of {max_bytes} bytes",
            )
        data = await h2_stream.recv_data(length)
    except AssertionError:  # grpclib's Buffer: the stream ended inside a message
        raise GRPCError(Status.INVALID_ARGUMENT, "truncated message") from None
    try:
        message = stream._codec.decode(data, stream._recv_type)
    except Exception:
        raise GRPCError(Status.INVALID_ARGUMENT, "malformed message") from None
    stream._messages_received += 1
    return message


def require_principal(context: CallContext) -> Principal:
    """The caller of an authenticated method (the gate guarantees one)."""
    if context.principal is None:
        raise Unauthenticated("this method needs a token")
    return context.principal
