"""API tokens and principals.

Token format: `asg_` + 43 base62 characters (256 random bits) + 6 base62 characters of CRC-32 over
the random part. The checksum rejects typos and garbage without touching the store and lets secret
scanners recognise a token. Only SHA-256(token) is stored; a token is found by its hash and the
stored hash is compared again in constant time. Roles: admin > service > device, viewer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from node.errors import InvalidInput, PermissionDenied, Unauthenticated
from store import records
from store import tokens as token_rows

if TYPE_CHECKING:
    import apsw

PREFIX = "asg_"
ALPHABET = string.digits + string.ascii_letters
BODY_CHARS = 43  # 62**43 > 2**256
CHECK_CHARS = 6  # 62**6 > 2**32
TOKEN_CHARS = len(PREFIX) + BODY_CHARS + CHECK_CHARS


class Role(StrEnum):
    ADMIN = "admin"
    SERVICE = "service"
    DEVICE = "device"
    VIEWER = "viewer"


class Action(StrEnum):
    """What a request wants to do; each role allows a fixed set."""

    READ = "read"  # read registry objects within scope
    WRITE_REGISTRY = "write"  # create/update/delete devices, networks, connections
    WRITE_SELF = "write-self"  # a device registering/updating itself, its own connections
    ROUTE = "route"  # send messages through the relay/router
    LOCK = "lock"  # use the lock service
    ADMIN = "admin"  # tokens, stats, logs, audit, force operations


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.SERVICE: frozenset(
        {Action.READ, Action.WRITE_REGISTRY, Action.WRITE_SELF, Action.ROUTE, Action.LOCK}
    ),
    Role.DEVICE: frozenset({Action.READ, Action.WRITE_SELF, Action.ROUTE, Action.LOCK}),
    Role.VIEWER: frozenset({Action.READ}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's identity, role and scope."""

    token_id: str
    role: Role
    device_id: str | None = None
    networks: tuple[str, ...] = ()

    def allows(self, action: Action) -> bool:
        return action in ROLE_ACTIONS[self.role]

    def require(self, action: Action) -> None:
        """Raises PermissionDenied when the role does not allow `action`."""
        if not self.allows(action):
            raise PermissionDenied(f"role '{self.role}' may not {action.value}")

    @property
    def scope(self) -> tuple[str, ...] | None:
        """Networks this principal may see, or None for all."""
        return self.networks if (self.networks or self.role is Role.DEVICE) else None

    def sees_network(self, network_id: str) -> bool:
        scope = self.scope
        return scope is None or network_id in scope

    def sees_any(self, network_ids: Sequence[str]) -> bool:
        scope = self.scope
        return scope is None or any(n in scope for n in network_ids)


SYSTEM = Principal(token_id="system", role=Role.ADMIN)


def _b62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _b62(zlib.crc32(body.encode("ascii")), CHECK_CHARS)


def new_token_secret() -> str:
    """A fresh token string (never stored)."""
    body = _b62(int.from_bytes(secrets.token_bytes(32), "big"), BODY_CHARS)
    return PREFIX + body + _checksum(body)


def well_formed(token: str) -> bool:
    """Length, prefix, alphabet and checksum are right (says nothing about validity)."""
    if len(token) != TOKEN_CHARS or not token.startswith(PREFIX):
        return False
    body, check = token[len(PREFIX) : -CHECK_CHARS], token[-CHECK_CHARS:]
    if any(c not in ALPHABET for c in body + check):
        return False
    return hmac.compare_digest(_checksum(body), check)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def check_token(conn: apsw.Connection, token: str, now: float) -> records.Token:
    """The live token row for `token`.

    Raises:
        Unauthenticated: malformed, unknown, revoked or expired.
    """
    if not well_formed(token):
        raise Unauthenticated("malformed token")
    digest = token_hash(token)
    row = token_rows.token_by_hash(conn, digest)
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise Unauthenticated("unknown token")
    if row.revoked_at is not None:
        raise Unauthenticated("token revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated("token expired")
    return row


def principal_of(row: records.Token) -> Principal:
    return Principal(row.token_id, Role(row.role), row.device_id, row.networks)


def make_token_row(
    *,
    name: str,
    role: Role,
    device_id: str | None,
    networks: Sequence[str],
    now: float,
    expires_at: float | None,
    id_factory: Callable[[], str] | None = None,
) -> tuple[str, records.Token]:
    """A new token: (the secret to show once, the row to store).

    Raises:
        InvalidInput: a device token without a device or networks, or a name that is too long.
    """
    if not name or len(name) > 128:
        raise InvalidInput("name: 1 to 128 characters")
    if role is Role.DEVICE and (device_id is None or not networks):
        raise InvalidInput("a device token needs device_id and at least one network")
    if role is not Role.DEVICE and device_id is not None:
        raise InvalidInput("device_id is only for device tokens")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at must be in the future")
    secret = new_token_secret()
    token_id = id_factory() if id_factory else "tok_" + secrets.token_hex(8)
    row = records.Token(
        token_id=token_id,
        token_hash=token_hash(secret),
        name=name,
        role=role.value,
        device_id=device_id,
        networks=tuple(dict.fromkeys(networks)),
        created_at=now,
        expires_at=expires_at,
        revoked_at=None,
        last_used_at=None,
    )
    return secret, row
