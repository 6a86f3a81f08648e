"""Heimdall, the optional external security service: token validation and device identities.

`HeimdallAuthenticator` chains it behind the node's own authenticator: only tokens the node does
not know (`Unauthenticated` with `reason="unknown-token"`) are asked about, with a deadline, and
answers are cached briefly (valid ones for `cache_ttl_s`, never past the token's own expiry;
invalid ones for `negative_cache_ttl_s`). When Heimdall cannot be reached or does not answer in
time the token is denied, never allowed, and nothing is cached, so the next call asks again.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from node.errors import NodeError, Unauthenticated, Unavailable
from node.rpc._island import Island
from node.rpc.backend import Authenticator
from node.rpc.clients._base import NeighbourChannel, neighbour_error
from node.rpc.model import Principal
from node.rpc.settings import HeimdallSettings
from protos.gen.asgard import v1 as pb

_ROLES = frozenset({"admin", "service", "device", "viewer"})
T = TypeVar("T")
_MARGIN_S = 1.0


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    """Heimdall's answer about a token; other fields are meaningful only when `valid`."""

    valid: bool
    subject: str = ""
    role: str = ""
    networks: tuple[str, ...] = ()
    device_id: str | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device as Heimdall knows it."""

    device_id: str
    owner: str
    networks: tuple[str, ...]
    public_key: bytes
    revoked: bool
    attributes: dict[str, str] = field(default_factory=dict)


class HeimdallClient(Protocol):
    """What the node asks Heimdall."""

    async def validate_token(self, token: str) -> TokenIdentity:
        """Heimdall's verdict on `token`; Unavailable when it cannot be asked."""
        ...

    async def device_identity(self, device_id: str) -> DeviceIdentity:
        """A device identity; NotFound when unknown, Unavailable when Heimdall cannot be asked."""
        ...


class HeimdallNotConfigured:
    """The default: no Heimdall. Every call fails with a clear Unavailable."""

    async def validate_token(self, token: str) -> TokenIdentity:
        await trio.lowlevel.checkpoint()
        raise Unavailable("Heimdall is not configured ([rpc.heimdall] address)")

    async def device_identity(self, device_id: str) -> DeviceIdentity:
        await trio.lowlevel.checkpoint()
        raise Unavailable("Heimdall is not configured ([rpc.heimdall] address)")


class GrpcHeimdall:
    """Heimdall over gRPC (asgard.v1.Heimdall), called on the island."""

    def __init__(self, island: Island, settings: HeimdallSettings) -> None:
        self._island = island
        self._settings = settings
        self.channel = NeighbourChannel("Heimdall", settings)

    async def validate_token(self, token: str) -> TokenIdentity:
        return await self._run(self._validate, token)

    async def device_identity(self, device_id: str) -> DeviceIdentity:
        return await self._run(self._identity, device_id)

    async def _run(self, fn: Callable[[str], Coroutine[Any, Any, T]], arg: str) -> T:
        with trio.move_on_after(self._settings.timeout_s + _MARGIN_S):
            return await self._island.run(fn, arg)
        raise Unavailable("Heimdall did not answer in time")

    # Island side ---------------------------------------------------------------------------
    def _stub(self) -> pb.HeimdallStub:
        return pb.HeimdallStub(
            self.channel.get(), timeout=self._settings.timeout_s, metadata=self.channel.metadata()
        )

    async def _validate(self, token: str) -> TokenIdentity:
        request = pb.ValidateTokenRequest(token=token, audience="asgard")
        try:
            reply = await self._stub().validate_token(request)
        except Exception as exc:
            raise neighbour_error("Heimdall", exc) from exc
        return TokenIdentity(
            valid=reply.valid,
            subject=reply.subject,
            role=reply.role,
            networks=tuple(reply.networks),
            device_id=reply.device_id or None,
            expires_at=None if reply.expires is None else reply.expires.timestamp(),
        )

    async def _identity(self, device_id: str) -> DeviceIdentity:
        request = pb.GetDeviceIdentityRequest(device_id=device_id)
        try:
            reply = await self._stub().get_device_identity(request)
        except Exception as exc:
            raise neighbour_error("Heimdall", exc) from exc
        return DeviceIdentity(
            device_id=reply.device_id,
            owner=reply.owner,
            networks=tuple(reply.networks),
            public_key=reply.public_key,
            revoked=reply.revoked,
            attributes=dict(reply.attributes),
        )


class HeimdallAuthenticator:
    """The node's authenticator first; Heimdall for tokens the node does not know."""

    def __init__(self, local: Authenticator, heimdall: HeimdallClient, settings: HeimdallSettings) -> None:
        self._local = local
        self._heimdall = heimdall
        self._settings = settings
        self._cache: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()
        self.remote_checks = 0

    async def authenticate(self, token: str) -> Principal:
        """Validate locally, then (unknown tokens only) with Heimdall."""
        try:
            return await self._local.authenticate(token)
        except Unauthenticated as exc:
            if exc.extra.get("reason") != "unknown-token":
                raise
        return await self._remote(token)

    async def _remote(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > trio.current_time():
            return _allowed(cached[1])
        self.remote_checks += 1
        try:
            with trio.fail_after(self._settings.timeout_s):
                identity = await self._heimdall.validate_token(token)
        except (trio.TooSlowError, NodeError) as exc:
            # Unreachable, slow or failing: deny, and do not remember it.
            raise Unauthenticated("the token could not be validated (Heimdall unavailable)") from exc
        principal = _principal(identity)
        self._remember(key, principal, identity)
        return _allowed(principal)

    def _remember(self, key: bytes, principal: Principal | None, identity: TokenIdentity) -> None:
        ttl = self._settings.cache_ttl_s if principal else self._settings.negative_cache_ttl_s
        if principal is not None and identity.expires_at is not None:
            ttl = min(ttl, identity.expires_at - time.time())
        if ttl <= 0:
            return
        self._cache[key] = (trio.current_time() + ttl, principal)
        self._cache.move_to_end(key)
        while len(self._cache) > self._settings.cache_max_entries:
            self._cache.popitem(last=False)


def _principal(identity: TokenIdentity) -> Principal | None:
    if not identity.valid or not identity.subject or identity.role not in _ROLES:
        return None
    if identity.expires_at is not None and identity.expires_at <= time.time():
        return None
    return Principal(
        subject=identity.subject,
        role=identity.role,  # type: ignore[arg-type]
        networks=identity.networks,
        device_id=identity.device_id,
    )


def _allowed(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthenticated("invalid token")
    return principal
