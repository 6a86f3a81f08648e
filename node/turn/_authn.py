"""Long-term credential checks for TURN requests (RFC 8489 §9.2.4), pure.

Order of the checks follows §9.2.4: no integrity -> 401 with REALM and NONCE; missing USERNAME /
USERHASH, REALM or NONCE -> 400; nonce not valid -> 438; unknown user or expired REST credential
-> 401; PASSWORD-ALGORITHM(S) not matching what the nonce announced -> 400; integrity mismatch
-> 401. Users come from a `UserSource` and from the TURN REST API secrets.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.turn._nonce import NonceCheck, NonceIssuer
from node.turn.credentials import (
    KeyMaterial,
    RestSecrets,
    UserHashSource,
    UserSource,
    parse_rest_username,
    rest_keys,
)
from wire.stun import (
    Attr,
    Message,
    PasswordAlgorithm,
    StunDecodeError,
    decode_password_algorithm_untrusted,
    decode_password_algorithms_untrusted,
    decode_text_untrusted,
    encode_password_algorithms,
    verify_message_integrity,
    verify_message_integrity_sha256,
)
from wire.stun._attributes import MAX_USERNAME_BYTES

OFFERED_ALGORITHMS: list[tuple[int, bytes]] = [(PasswordAlgorithm.SHA256, b""), (PasswordAlgorithm.MD5, b"")]
OFFERED_ALGORITHMS_VALUE = encode_password_algorithms(OFFERED_ALGORITHMS)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent an authenticated request, and the key and integrity kind for the answer."""

    username: str
    user: str
    key: bytes
    integrity: str


@dataclass(frozen=True, slots=True)
class AuthError:
    """Why a request is refused: 400, 401 or 438, and a reason for the metrics."""

    code: int
    reason: str


class Authenticator:
    """Checks requests against users and REST secrets; issues and checks nonces."""

    def __init__(self, *, realm: str, nonces: NonceIssuer, users: UserSource, rest: RestSecrets) -> None:
        self.realm = realm
        self.nonces = nonces
        self.users = users
        self.rest = rest

    def authenticate(
        self, message: Message, client: str, now: float, unix_now: float
    ) -> Principal | AuthError:
        """Check `message` from `client` (transport and address, as nonces are bound to it)."""
        has_mi = message.has(Attr.MESSAGE_INTEGRITY)
        has_mi256 = message.has(Attr.MESSAGE_INTEGRITY_SHA256)
        if not has_mi and not has_mi256:
            return AuthError(401, "challenge")
        realm, nonce = message.get(Attr.REALM), message.get(Attr.NONCE)
        username_value, hashed = message.get(Attr.USERNAME), message.get(Attr.USERHASH)
        if realm is None or nonce is None or (username_value is None and hashed is None):
            return AuthError(400, "bad-request")
        check = self.nonces.check(nonce, client, now)
        if check is not NonceCheck.VALID:
            return AuthError(438, "stale-nonce" if check is NonceCheck.STALE else "forged-nonce")
        try:
            if decode_text_untrusted(realm) != self.realm:
                return AuthError(401, "wrong-realm")
            found = self._find_user(username_value, hashed, unix_now)
            if isinstance(found, AuthError):
                return found
            algorithm = self._algorithm(message)
        except StunDecodeError:
            return AuthError(400, "bad-request")
        if algorithm is None:
            return AuthError(400, "algorithm-mismatch")
        username, user, candidates = found
        return self._verify(message, username, user, candidates, algorithm, has_mi256)

    def _find_user(
        self, username_value: bytes | None, hashed: bytes | None, unix_now: float
    ) -> tuple[str, str, list[KeyMaterial]] | AuthError:
        if username_value is None:
            assert hashed is not None
            if not isinstance(self.users, UserHashSource):
                return AuthError(401, "unknown-user")
            match = self.users.lookup_userhash(hashed, self.realm)
            return AuthError(401, "unknown-user") if match is None else (match[0], match[0], [match[1]])
        username = decode_text_untrusted(username_value, max_chars=MAX_USERNAME_BYTES)
        candidates: list[KeyMaterial] = []
        user = username
        rest = rest_keys(username, self.realm, self.rest, unix_now)
        if rest is not None:
            parsed = parse_rest_username(username)
            user = parsed[1] if parsed is not None and parsed[1] else username
            if not rest:
                return AuthError(401, "expired-credential")
            candidates.extend(rest)
        keys = self.users.lookup(username, self.realm)
        if keys is not None:
            candidates.append(keys)
        if not candidates:
            return AuthError(401, "unknown-user")
        return username, user, candidates

    @staticmethod
    def _algorithm(message: Message) -> int | None:
        """PASSWORD-ALGORITHM to use, or None when §9.2.4's consistency rules are broken."""
        offered, chosen = message.get(Attr.PASSWORD_ALGORITHMS), message.get(Attr.PASSWORD_ALGORITHM)
        if offered is None and chosen is None:
            return PasswordAlgorithm.MD5
        if offered is None or chosen is None:
            return None
        if decode_password_algorithms_untrusted(offered) != OFFERED_ALGORITHMS:
            return None
        algorithm, params = decode_password_algorithm_untrusted(chosen)
        return algorithm if (algorithm, params) in OFFERED_ALGORITHMS else None

    @staticmethod
    def _verify(
        message: Message,
        username: str,
        user: str,
        candidates: list[KeyMaterial],
        algorithm: int,
        sha256: bool,
    ) -> Principal | AuthError:
        for keys in candidates:
            key = keys.key_for(algorithm)
            if key is None:
                continue
            ok = (
                verify_message_integrity_sha256(message, key)
                if sha256
                else verify_message_integrity(message, key)
            )
            if ok:
                return Principal(username, user, key, "sha256" if sha256 else "sha1")
        return AuthError(401, "bad-credentials")
