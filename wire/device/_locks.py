"""Lock control messages (frame types 0x20-0x2F, docs/protocol.md §7): typed JSON payloads.

Device → node requests use 0x20-0x27, node → device answers and notices 0x28-0x2F. Answers carry
the message id of the request they answer; notices about a lease (PREEMPTED, EXPIRED, RELEASED by
the node) carry the message id of the ACQUIRE that obtained it. Field rules are checked on decode
and on encode; unknown keys are ignored, as for every control message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire._errors import DecodeError
from wire.device._codes import LOCK_TYPES, NackReason
from wire.device._control import (
    Check,
    ControlMessage,
    check_fields,
    decode_json_object_untrusted,
    integer,
    items,
    number,
    optional,
    text,
)
from wire.device._frame import FrameView

MAX_RESOURCE_BYTES = 256
MAX_TOKEN = (1 << 63) - 1  # etcd revisions are int64; local tokens never get near
MAX_PRIORITY = 1_000_000
MAX_LEASE_S = 1e6
MAX_WAIT_S = 1e6
MODES = ("exclusive", "shared")


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(value)

    return check


_RESOURCE = text(1, MAX_RESOURCE_BYTES)
_TOKEN = integer(1, MAX_TOKEN)
_MODE = _one_of(*MODES)
_LABEL = text(1, 128)
_SLUG = text(1, 32)
_DETAIL = text(0, 1024)
_CYCLE = items(text(1, 512), 64)
_LEASE = number(0.001, MAX_LEASE_S)
_UNIX = number(0, 1e11)


@dataclass(frozen=True, slots=True)
class LockAcquire(ControlMessage):
    """0x20, device → node: wait for a lock. Answered QUEUED*, then GRANTED or REFUSED."""

    TYPE = 0x20
    CHECKS = {
        "resource": _RESOURCE,
        "mode": optional(_MODE),
        "lease_s": optional(_LEASE),
        "priority": optional(integer(0, MAX_PRIORITY)),
        "wait_s": optional(number(0, MAX_WAIT_S)),
        "owner": optional(_LABEL),
    }
    resource: str
    mode: str | None = None
    lease_s: float | None = None
    priority: int | None = None
    wait_s: float | None = None
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class LockRelease(ControlMessage):
    """0x21, device → node: give a lease back. Answered RELEASED or NACK."""

    TYPE = 0x21
    CHECKS = {"resource": _RESOURCE, "token": _TOKEN}
    resource: str
    token: int


@dataclass(frozen=True, slots=True)
class LockRefresh(ControlMessage):
    """0x22, device → node: extend a lease to now + lease_s. Answered REFRESHED or NACK."""

    TYPE = 0x22
    CHECKS = {"resource": _RESOURCE, "token": _TOKEN, "lease_s": optional(_LEASE)}
    resource: str
    token: int
    lease_s: float | None = None


@dataclass(frozen=True, slots=True)
class LockQueued(ControlMessage):
    """0x28, node → device: the ACQUIRE waits; `position` counts from 0."""

    TYPE = 0x28
    CHECKS = {"resource": _RESOURCE, "position": integer(0, 1 << 31)}
    resource: str
    position: int


@dataclass(frozen=True, slots=True)
class LockGranted(ControlMessage):
    """0x29, node → device: the ACQUIRE holds the lock; `token` is the fencing token."""

    TYPE = 0x29
    CHECKS = {
        "resource": _RESOURCE,
        "token": _TOKEN,
        "mode": _MODE,
        "lease_s": _LEASE,
        "expires_at": _UNIX,
        "priority": integer(0, MAX_PRIORITY),
        "owner": text(1, 512),
    }
    resource: str
    token: int
    mode: str
    lease_s: float
    expires_at: float
    priority: int
    owner: str


@dataclass(frozen=True, slots=True)
class LockRefused(ControlMessage):
    """0x2A, node → device: the ACQUIRE ended without a grant.

    `reason` is the error code (aborted, deadlock, unavailable, resource-exhausted, ...), `cause`
    the lock service's finer reason (timeout, busy, session-ended, lost, cancelled).
    """

    TYPE = 0x2A
    CHECKS = {
        "resource": _RESOURCE,
        "reason": _SLUG,
        "cause": optional(_SLUG),
        "detail": optional(_DETAIL),
        "cycle": optional(_CYCLE),
    }
    resource: str
    reason: str
    cause: str | None = None
    detail: str | None = None
    cycle: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class LockReleased(ControlMessage):
    """0x2B, node → device: a lease ended by release (answer) or by the node (notice)."""

    TYPE = 0x2B
    CHECKS = {"resource": _RESOURCE, "token": _TOKEN, "cause": _SLUG}
    resource: str
    token: int
    cause: str


@dataclass(frozen=True, slots=True)
class LockPreempted(ControlMessage):
    """0x2C, node → device: the lease was revoked to break a deadlock; its token is stale."""

    TYPE = 0x2C
    CHECKS = {"resource": _RESOURCE, "token": _TOKEN, "cycle": optional(_CYCLE)}
    resource: str
    token: int
    cycle: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class LockExpired(ControlMessage):
    """0x2D, node → device: the lease ran out without a refresh; its token is stale."""

    TYPE = 0x2D
    CHECKS = {"resource": _RESOURCE, "token": _TOKEN}
    resource: str
    token: int


@dataclass(frozen=True, slots=True)
class LockRefreshed(ControlMessage):
    """0x2E, node → device: the answer to REFRESH, with the new deadline."""

    TYPE = 0x2E
    CHECKS = {"resource": _RESOURCE, "token": _TOKEN, "lease_s": _LEASE, "expires_at": _UNIX}
    resource: str
    token: int
    lease_s: float
    expires_at: float


LockMessage = (
    LockAcquire
    | LockRelease
    | LockRefresh
    | LockQueued
    | LockGranted
    | LockRefused
    | LockReleased
    | LockPreempted
    | LockExpired
    | LockRefreshed
)
LOCK_MESSAGES: dict[int, type[ControlMessage]] = {
    cls.TYPE: cls
    for cls in (
        LockAcquire,
        LockRelease,
        LockRefresh,
        LockQueued,
        LockGranted,
        LockRefused,
        LockReleased,
        LockPreempted,
        LockExpired,
        LockRefreshed,
    )
}
LOCK_REQUEST_TYPES = frozenset({LockAcquire.TYPE, LockRelease.TYPE, LockRefresh.TYPE})
"""Types a device sends; the others of 0x20-0x2F come only from the node."""
assert set(LOCK_MESSAGES) <= LOCK_TYPES
check_fields(tuple(LOCK_MESSAGES.values()))


def decode_lock_untrusted(frame: FrameView) -> LockMessage:
    """Decode the JSON payload of a lock frame into its typed message.

    Raises:
        DecodeError: hint BAD_FRAME for a type without a message or a payload that is not a JSON
            object, INVALID_INPUT for a field with a wrong type, size or value.
    """
    cls = LOCK_MESSAGES.get(frame.type)
    if cls is None:
        raise DecodeError(f"frame type {frame.type:#04x} is not a lock message", hint=NackReason.BAD_FRAME)
    message = cls.from_json(decode_json_object_untrusted(frame.payload))
    return message  # type: ignore[return-value]
