"""TURN credentials: long-term users (RFC 8489 §9.2) and the TURN REST API scheme that coturn and
WebRTC apps use (username `expiry:user`, password base64(HMAC-SHA1(secret, username))).

Users come from a `UserSource` (`lookup(username, realm) -> KeyMaterial | None`); `ConfigUsers`
serves the `[turn.users]` table, the node adds a store-backed source. Keys, not passwords, are what
a source returns, so a store can keep only derived keys.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from node.errors import InvalidInput, Unavailable
from wire.stun import PasswordAlgorithm, long_term_key, userhash

REST_SEPARATOR = ":"


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A user's long-term keys, one per password algorithm (RFC 8489 §18.5)."""

    md5: bytes | None = None
    sha256: bytes | None = None

    def key_for(self, algorithm: int) -> bytes | None:
        """The key for PASSWORD-ALGORITHM `algorithm`, or None when this user has none."""
        if algorithm == PasswordAlgorithm.SHA256:
            return self.sha256
        if algorithm == PasswordAlgorithm.MD5:
            return self.md5
        return None


def derive_keys(username: str, realm: str, password: str) -> KeyMaterial:
    """MD5 and SHA-256 long-term keys of a user."""
    return KeyMaterial(
        md5=long_term_key(username, realm, password, PasswordAlgorithm.MD5),
        sha256=long_term_key(username, realm, password, PasswordAlgorithm.SHA256),
    )


class UserSource(Protocol):
    """Where long-term credential users come from (config, the store, ...)."""

    def lookup(self, username: str, realm: str) -> KeyMaterial | None:
        """The user's keys, or None when there is no such user in this realm."""
        ...


@runtime_checkable
class UserHashSource(Protocol):
    """A user source that can also find a user by USERHASH (RFC 8489 §14.4)."""

    def lookup_userhash(self, hashed: bytes, realm: str) -> tuple[str, KeyMaterial] | None:
        """(username, keys) of the user whose USERHASH is `hashed`, or None."""
        ...


class ConfigUsers:
    """Users from the `[turn.users]` table; keys are derived once, USERHASH is indexed."""

    def __init__(self, users: Mapping[str, str], realm: str) -> None:
        self._realm = realm
        self._keys = {name: derive_keys(name, realm, password) for name, password in users.items()}
        self._by_hash = {userhash(name, realm): name for name in users}

    def lookup(self, username: str, realm: str) -> KeyMaterial | None:
        """The keys of `username` in this source's realm."""
        return self._keys.get(username) if realm == self._realm else None

    def lookup_userhash(self, hashed: bytes, realm: str) -> tuple[str, KeyMaterial] | None:
        """(username, keys) by USERHASH."""
        name = self._by_hash.get(hashed) if realm == self._realm else None
        return None if name is None else (name, self._keys[name])


class ChainedUsers:
    """Several user sources asked in order (config users, then the store's)."""

    def __init__(self, sources: Iterable[UserSource]) -> None:
        self._sources = list(sources)

    def lookup(self, username: str, realm: str) -> KeyMaterial | None:
        """The first source's answer."""
        for source in self._sources:
            found = source.lookup(username, realm)
            if found is not None:
                return found
        return None

    def lookup_userhash(self, hashed: bytes, realm: str) -> tuple[str, KeyMaterial] | None:
        """The first USERHASH-capable source's answer."""
        for source in self._sources:
            if isinstance(source, UserHashSource):
                found = source.lookup_userhash(hashed, realm)
                if found is not None:
                    return found
        return None


def rest_password(secret: str, username: str) -> str:
    """The TURN REST API password: base64(HMAC-SHA1(secret, username))."""
    digest = hmac.digest(secret.encode(), username.encode(), "sha1")
    return base64.b64encode(digest).decode()


def parse_rest_username(username: str) -> tuple[int, str] | None:
    """(expiry as Unix time, user) of an `expiry:user` (or bare `expiry`) username, else None."""
    stamp, _, user = username.partition(REST_SEPARATOR)
    if not stamp.isdigit() or len(stamp) > 12:
        return None
    return int(stamp), user


@dataclass
class RestSecrets:
    """The shared secrets accepted now: the configured ones, plus retired ones in their grace."""

    current: list[str] = field(default_factory=list)
    retired: dict[str, float] = field(default_factory=dict)  # secret -> accepted until (Unix)

    def update(self, secrets: Iterable[str], unix_now: float, grace_s: float) -> None:
        """Adopt a new list; secrets that left it stay accepted for `grace_s` seconds."""
        new = list(secrets)
        for secret in self.current:
            if secret not in new:
                self.retired[secret] = unix_now + grace_s
        for secret in new:
            self.retired.pop(secret, None)
        self.current = new

    def accepted(self, unix_now: float) -> list[str]:
        """Every secret a credential may be signed with right now."""
        for secret, until in list(self.retired.items()):
            if until < unix_now:
                del self.retired[secret]
        return [*self.current, *self.retired]


def rest_keys(username: str, realm: str, secrets: RestSecrets, unix_now: float) -> list[KeyMaterial] | None:
    """Candidate keys of a REST username, one per accepted secret; None when it is not a REST
    username or no secret is configured, [] when it has expired."""
    parsed = parse_rest_username(username)
    accepted = secrets.accepted(unix_now)
    if parsed is None or not accepted:
        return None
    if parsed[0] < unix_now:
        return []
    return [derive_keys(username, realm, rest_password(secret, username)) for secret in accepted]


@dataclass(frozen=True)
class TurnCredential:
    """A short-lived credential for a device and the URIs to use it with."""

    username: str
    password: str
    ttl_s: int
    expires_at: int
    realm: str
    uris: list[str]

    def as_dict(self) -> dict[str, object]:
        """The JSON body of `POST /api/v1/turn/credentials` (the shape WebRTC apps expect)."""
        return {
            "username": self.username,
            "password": self.password,
            "ttl": self.ttl_s,
            "expires_at": self.expires_at,
            "realm": self.realm,
            "uris": list(self.uris),
        }


def turn_uris(host: str, port: int, *, udp: bool = True, tcp: bool = True) -> list[str]:
    """`stun:` and `turn:` URIs (RFC 7064, RFC 7065) for a server."""
    shown = f"[{host}]" if ":" in host else host
    uris = [f"stun:{shown}:{port}"]
    if udp:
        uris.append(f"turn:{shown}:{port}?transport=udp")
    if tcp:
        uris.append(f"turn:{shown}:{port}?transport=tcp")
    return uris


def issue_rest_credential(
    secret: str, user: str, *, ttl_s: int, unix_now: float, realm: str, uris: list[str]
) -> TurnCredential:
    """A REST credential for `user` valid for `ttl_s` seconds from `unix_now`.

    Raises:
        InvalidInput: the user name is empty or contains the separator.
        Unavailable: no secret is configured.
    """
    if not user or REST_SEPARATOR in user or len(user) > 256:
        raise InvalidInput("the TURN user must be 1-256 characters without ':'")
    if not secret:
        raise Unavailable("TURN REST credentials are not configured (turn.rest_secrets is empty)")
    expires_at = int(unix_now) + ttl_s
    username = f"{expires_at}{REST_SEPARATOR}{user}"
    return TurnCredential(
        username=username,
        password=rest_password(secret, username),
        ttl_s=ttl_s,
        expires_at=expires_at,
        realm=realm,
        uris=uris,
    )
