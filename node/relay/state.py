"""The relay's rules for one connection, without I/O: phases, admission, rate, Origin, reach.

Theory of operation
-------------------
A connection goes through three phases (docs/protocol.md §5):

    AWAITING_HELLO --HELLO ok--> AUTHENTICATED --REGISTER ok--> REGISTERED
          |  (Authorization header at the upgrade skips straight to AUTHENTICATED)
          +--HELLO bad / hello timeout--> closed 4001

`admit(phase, type)` says which frame types each phase accepts and the NACK reason for the rest:
before authentication only HELLO; before registration no data frames, no HEARTBEAT, JOIN, LEAVE
or DELIVERED (they name the session's device) but SUBSCRIBE works (a watcher needs no device);
frame types that only the node sends are refused in every phase; HELLO after authentication
is refused. Lock frames (0x20-0x2F) go to whatever handler is registered for them, and get
BAD_FRAME while there is none.

Every received message costs one token of a per-connection bucket (`MessageRate`: `rate_per_s`
sustained, `burst` at once); a connection that overdraws it is closed with 1008, because a NACK
would itself be traffic the client is not reading. `HeartbeatThrottle` limits how often traffic
refreshes the registry (last_seen, connection record) to one write per interval per session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from enum import IntEnum

from node.auth import Principal
from wire.device import DATA_TYPES, LOCK_TYPES, FrameType, NackReason


class Phase(IntEnum):
    """Where a connection is in its session set-up."""

    AWAITING_HELLO = 0
    AUTHENTICATED = 1
    REGISTERED = 2


NODE_ONLY_TYPES = frozenset(
    {FrameType.WELCOME, FrameType.REGISTERED, FrameType.ACK, FrameType.NACK, FrameType.EVENT}
)
_NEED_DEVICE = (
    frozenset({FrameType.HEARTBEAT, FrameType.JOIN, FrameType.LEAVE, FrameType.DELIVERED})
    | DATA_TYPES
    | LOCK_TYPES
)


def admit(phase: Phase, frame_type: int) -> NackReason | None:
    """None when a frame of `frame_type` may be handled in `phase`, else the NACK reason."""
    if frame_type in NODE_ONLY_TYPES:
        return NackReason.BAD_FRAME
    if phase is Phase.AWAITING_HELLO:
        return None if frame_type == FrameType.HELLO else NackReason.UNAUTHENTICATED
    if frame_type == FrameType.HELLO:
        return NackReason.INVALID_INPUT
    if phase is Phase.AUTHENTICATED and frame_type in _NEED_DEVICE:
        return NackReason.NOT_REGISTERED
    return None


class MessageRate:
    """A token bucket: `rate` messages per second sustained, `burst` at once."""

    __slots__ = ("_full", "_last", "_level", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._full = float(burst)
        self._level = self._full
        self._last = now

    def take(self, count: int, now: float) -> bool:
        """Spend `count` tokens; False (and nothing spent) when the bucket holds fewer."""
        level = self._level + (now - self._last) * self.rate
        if level > self._full:
            level = self._full
        self._last = now
        if level < count:
            self._level = level
            return False
        self._level = level - count
        return True


class HeartbeatThrottle:
    """Lets one registry refresh through per `interval_s`."""

    __slots__ = ("next_at",)

    def __init__(self) -> None:
        self.next_at = float("-inf")  # a hot loop may compare with this before calling `due`

    def due(self, now: float, interval_s: float) -> bool:
        """True (and the next one `interval_s` later) when a refresh may be written now."""
        if now < self.next_at:
            return False
        self.next_at = now + interval_s
        return True


def origin_allowed(origin: str | None, allowed: Iterable[str]) -> bool:
    """RFC 6455 §10.2: a browser's Origin must be on the allow-list; no Origin means no browser."""
    if origin is None:
        return True
    allowed = list(allowed)
    return "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}


def id_bytes(text: str) -> bytes:
    """The 16 bytes of a UUID in text form."""
    return uuid.UUID(text).bytes


def reach_of(principal: Principal) -> frozenset[bytes] | None:
    """The networks a principal may send to (None: every network)."""
    scope = principal.scope
    return None if scope is None else frozenset(id_bytes(n) for n in scope)
