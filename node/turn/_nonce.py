"""Stateless nonces (RFC 8489 §9.2): nothing is stored per client before it authenticates.

A nonce is the RFC 8489 cookie with the security feature bits, then base64url of an issue time
(milliseconds of the service clock) and a truncated HMAC-SHA256 of (issue time, client) under a
per-process key. Checking one recomputes the MAC and compares the age with the lifetime.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from enum import Enum

from wire.stun import NONCE_COOKIE, make_nonce

_STAMP_BYTES = 8
_MAC_BYTES = 12
_PREFIX_CHARS = len(NONCE_COOKIE) + 4


class NonceCheck(Enum):
    """Outcome of checking a nonce."""

    VALID = "valid"
    STALE = "stale"
    FORGED = "forged"


class NonceIssuer:
    """Issues and checks nonces bound to a client transport address."""

    def __init__(self, *, lifetime_s: float, features: int, key: bytes | None = None) -> None:
        self.lifetime_s = lifetime_s
        self._features = features
        self._key = key if key is not None else secrets.token_bytes(32)

    def _mac(self, stamp: bytes, client: str) -> bytes:
        return hmac.digest(self._key, stamp + client.encode(), "sha256")[:_MAC_BYTES]

    def issue(self, client: str, now: float) -> bytes:
        """A fresh nonce for `client` (a transport-and-address string) at service time `now`."""
        stamp = max(0, int(now * 1000)).to_bytes(_STAMP_BYTES, "big")
        opaque = base64.urlsafe_b64encode(stamp + self._mac(stamp, client)).decode()
        return make_nonce(self._features, opaque).encode()

    def check(self, nonce: bytes, client: str, now: float) -> NonceCheck:
        """Whether `nonce` was issued by this issuer for `client` and is still fresh."""
        try:
            raw = base64.urlsafe_b64decode(nonce[_PREFIX_CHARS:])
        except (binascii.Error, ValueError):
            return NonceCheck.FORGED
        if (
            len(raw) != _STAMP_BYTES + _MAC_BYTES
            or nonce[:_PREFIX_CHARS] != make_nonce(self._features, "").encode()
        ):
            return NonceCheck.FORGED
        stamp, mac = raw[:_STAMP_BYTES], raw[_STAMP_BYTES:]
        if not hmac.compare_digest(mac, self._mac(stamp, client)):
            return NonceCheck.FORGED
        age = now - int.from_bytes(stamp, "big") / 1000
        return NonceCheck.VALID if 0 <= age <= self.lifetime_s else NonceCheck.STALE
