"""Mutual authentication of a peer link: a cluster-secret challenge-response. Pure (no I/O).

The dialer sends HELLO (cluster id, its node id, a fresh 32-byte nonce); the acceptor answers
CHALLENGE (its node id, its own nonce, and its proof); the dialer checks that proof and sends its
own; the acceptor checks it. A proof is

    HMAC-SHA256(link_key, role || transcript)
    link_key   = HMAC-SHA256(cluster_secret, "asgard-mesh/1 link key" || cluster_id)
    transcript = cluster_id, dialer id, acceptor id, dialer nonce, acceptor nonce (length-prefixed)

so it binds both nonces (no replay: each side contributes fresh randomness), both node ids (a proof
made for one pair is worthless for another) and the role (a proof cannot be reflected back at its
sender). The secret itself never crosses the wire; proofs are compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PROTOCOL = "asgard-mesh/1"
NONCE_BYTES = 32
PROOF_BYTES = 32
DIALER = b"dialer"
ACCEPTOR = b"acceptor"
_NODE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_nonce() -> bytes:
    """A fresh random nonce."""
    return secrets.token_bytes(NONCE_BYTES)


def link_key(cluster_secret: str, cluster_id: str) -> bytes:
    """The key proofs are made with (derived, so the secret is used for nothing else)."""
    return hmac.new(
        cluster_secret.encode(), f"{PROTOCOL} link key\0{cluster_id}".encode(), hashlib.sha256
    ).digest()


def transcript(
    cluster_id: str, dialer: str, acceptor: str, dialer_nonce: bytes, acceptor_nonce: bytes
) -> bytes:
    """Everything both proofs cover, each field length-prefixed (no two inputs encode alike)."""
    parts = (cluster_id.encode(), dialer.encode(), acceptor.encode(), dialer_nonce, acceptor_nonce)
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


def proof(key: bytes, role: bytes, text: bytes) -> bytes:
    """The proof of `role` over `text`."""
    return hmac.new(key, role + b"\0" + text, hashlib.sha256).digest()


def verify(key: bytes, role: bytes, text: bytes, claimed: bytes) -> bool:
    """True when `claimed` is the proof of `role` over `text` (constant-time comparison)."""
    return hmac.compare_digest(proof(key, role, text), claimed)


def valid_node_id(text: str) -> bool:
    """A node id as peers may send it (the node's UUID; bounded and plain)."""
    return bool(_NODE_ID.match(text))


def valid_nonce(nonce: bytes) -> bool:
    return len(nonce) == NONCE_BYTES
