"""Long-term credential mechanism pieces (RFC 8489 §9.2): keys, USERHASH, the nonce cookie."""

from __future__ import annotations

import base64
import binascii
import hashlib
import unicodedata

from wire._errors import EncodeError
from wire.stun._constants import PasswordAlgorithm

NONCE_COOKIE = "obMatJos2"  # RFC 8489 §9.2
_NONCE_FEATURES_CHARS = 4  # 24 feature bits as base64


def opaque_string(text: str) -> str:
    """PRECIS OpaqueString preparation (RFC 8265 §4.2) of a realm or password.

    Non-ASCII spaces become U+0020, the result is NFC; control characters and the empty string
    are refused.

    Raises:
        ValueError: the text is empty or holds a control character.
    """
    mapped = "".join(" " if ch != " " and unicodedata.category(ch) == "Zs" else ch for ch in text)
    prepared = unicodedata.normalize("NFC", mapped)
    if not prepared or any(unicodedata.category(ch) == "Cc" for ch in prepared):
        raise ValueError("empty text or a control character")
    return prepared


def long_term_key(username: str, realm: str, password: str, algorithm: int = PasswordAlgorithm.MD5) -> bytes:
    """The long-term credential key (RFC 8489 §9.2.2): a digest of
    username ":" OpaqueString(realm) ":" OpaqueString(password), MD5 or SHA-256.

    Raises:
        EncodeError: an unknown algorithm or text that OpaqueString refuses.
    """
    try:
        material = f"{username}:{opaque_string(realm)}:{opaque_string(password)}".encode()
    except ValueError as exc:
        raise EncodeError(str(exc)) from None
    if algorithm == PasswordAlgorithm.MD5:
        return hashlib.md5(material, usedforsecurity=False).digest()
    if algorithm == PasswordAlgorithm.SHA256:
        return hashlib.sha256(material).digest()
    raise EncodeError(f"unknown password algorithm {algorithm}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH value (RFC 8489 §14.4): SHA-256(username ":" OpaqueString(realm))."""
    try:
        return hashlib.sha256(f"{username}:{opaque_string(realm)}".encode()).digest()
    except ValueError as exc:
        raise EncodeError(str(exc)) from None


def make_nonce(features: int, opaque: str) -> str:
    """A NONCE that starts with the cookie and the 24-bit security feature set (RFC 8489 §9.2)."""
    if not 0 <= features <= 0xFFFFFF:
        raise EncodeError("security features are 24 bits")
    return NONCE_COOKIE + base64.b64encode(features.to_bytes(3, "big")).decode() + opaque


def nonce_features(nonce: bytes) -> int | None:
    """The security feature bits of a nonce that carries the cookie, else None."""
    cookie = NONCE_COOKIE.encode()
    if not nonce.startswith(cookie):
        return None
    encoded = nonce[len(cookie) : len(cookie) + _NONCE_FEATURES_CHARS]
    if len(encoded) != _NONCE_FEATURES_CHARS:
        return None
    try:
        return int.from_bytes(base64.b64decode(encoded, validate=True), "big")
    except (binascii.Error, ValueError):
        return None
