"""Peer links on the Trio side: the challenge-response on a fresh stream (both roles) and `Link`.

The messages and proofs are in `_auth` (docs/mesh.md, security model). Whoever fails the exchange
gets `Refused`: the acceptor answers READY(accepted=false) first so the dialer learns why, and the
node that detected a bad or missing proof reports it as a security event (the caller logs it and
writes the audit entry). Every step has the handshake deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import trio

from node.mesh import _auth as auth
from node.mesh._linkstate import LinkHealth
from node.mesh._peer import PeerStream
from node.mesh._peer_model import Challenge, Hello, PeerMessage, Proof, Ready

_M = TypeVar("_M", bound=PeerMessage)
SELF_LINK = "a node cannot link to itself"  # e.g. one peer list, own address included, on every node


class Refused(Exception):
    """The handshake failed; `security` when a proof was wrong or missing (not just a mismatch)."""

    def __init__(self, reason: str, *, peer: str = "", security: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.peer = peer
        self.security = security


@dataclass(frozen=True, slots=True)
class Identity:
    """What this node says about itself in a handshake."""

    node_id: str
    cluster_id: str
    version: str
    address: str
    node_name: str


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What an authenticated peer said about itself."""

    node_id: str
    version: str
    address: str
    node_name: str


@dataclass(eq=False, slots=True)
class Link:
    """An authenticated link to one peer node (the router's `PeerLink`)."""

    peer: PeerInfo
    stream: PeerStream
    dialer: str
    opened_at: float
    health: LinkHealth
    frames_out: int = 0
    frames_in: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def peer_id(self) -> str:
        return self.peer.node_id

    def send(self, message: PeerMessage) -> bool:
        """Queue a message without waiting; False when the link is closed or its backlog is full."""
        return self.stream.send_nowait(message)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


async def dial_handshake(stream: PeerStream, me: Identity, key: bytes) -> PeerInfo:
    """The dialer's side: HELLO, check CHALLENGE, PROOF, wait for READY."""
    nonce = auth.new_nonce()
    await stream.send(
        Hello(auth.PROTOCOL, me.cluster_id, me.node_id, nonce, me.version, me.address, me.node_name)
    )
    challenge = await _expect(stream, Challenge)
    peer = challenge.node_id
    if not auth.valid_node_id(peer) or not auth.valid_nonce(challenge.nonce) or peer == me.node_id:
        raise Refused("malformed challenge", peer=peer, security=True)
    text = auth.transcript(me.cluster_id, me.node_id, peer, nonce, challenge.nonce)
    if not auth.verify(key, auth.ACCEPTOR, text, challenge.proof):
        await _refuse(stream, "authentication failed")
        raise Refused("the acceptor's proof is wrong (another cluster secret)", peer=peer, security=True)
    stream.authenticated()  # before our PROOF: whatever the acceptor sends after READY may be large
    await stream.send(Proof(auth.proof(key, auth.DIALER, text)))
    ready = await _expect(stream, Ready)
    if not ready.accepted:
        raise Refused(f"refused by the peer: {ready.reason}", peer=peer)
    return PeerInfo(peer, challenge.version, challenge.address, challenge.node_name)


async def accept_handshake(
    stream: PeerStream, me: Identity, key: bytes, allowed: tuple[str, ...]
) -> PeerInfo:
    """The acceptor's side: check HELLO, CHALLENGE with our proof, check PROOF, READY."""
    hello = await _expect(stream, Hello)
    peer = hello.node_id
    reason = _hello_problem(hello, me, allowed)
    if reason is not None:
        await _refuse(stream, reason)
        raise Refused(reason, peer=peer, security=reason != SELF_LINK)
    nonce = auth.new_nonce()
    text = auth.transcript(me.cluster_id, peer, me.node_id, hello.nonce, nonce)
    mine = auth.proof(key, auth.ACCEPTOR, text)
    await stream.send(Challenge(me.node_id, nonce, mine, me.version, me.address, me.node_name))
    try:
        answer = await _expect(stream, Proof)
    except Refused as exc:  # no proof after our challenge: it could not make one
        raise Refused(f"no proof after the challenge ({exc.reason})", peer=peer, security=True) from None
    if not auth.verify(key, auth.DIALER, text, answer.proof):
        await _refuse(stream, "authentication failed")
        raise Refused("the dialer's proof is wrong (no or another cluster secret)", peer=peer, security=True)
    stream.authenticated()  # before READY, after which the dialer may send large messages
    await stream.send(Ready(True))
    return PeerInfo(peer, hello.version, hello.address, hello.node_name)


def _hello_problem(hello: Hello, me: Identity, allowed: tuple[str, ...]) -> str | None:
    if hello.protocol != auth.PROTOCOL:
        return f"unsupported protocol {hello.protocol[:40]!r}"
    if hello.cluster_id != me.cluster_id:
        return "another cluster"
    if not auth.valid_node_id(hello.node_id) or not auth.valid_nonce(hello.nonce):
        return "malformed hello"
    if hello.node_id == me.node_id:
        return SELF_LINK
    if allowed and hello.node_id not in allowed:
        return "node not in mesh.allowed_nodes"
    return None


async def _refuse(stream: PeerStream, reason: str) -> None:
    with trio.move_on_after(1.0):
        await stream.send(Ready(False, reason))


async def _expect(stream: PeerStream, kind: type[_M]) -> _M:
    try:
        message = await stream.receive()
    except trio.EndOfChannel:
        raise Refused("the peer ended the link during the handshake") from None
    if isinstance(message, Ready) and not message.accepted and kind is not Ready:
        raise Refused(f"refused by the peer: {message.reason}")
    if not isinstance(message, kind):
        raise Refused(f"expected {kind.__name__}, got {type(message).__name__}", security=True)
    return message
