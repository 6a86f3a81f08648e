"""Value types of the lock service: modes, requests, leases, inspection views and events."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from node.errors import Aborted, Deadlock, NodeError


class LockMode(StrEnum):
    """Exclusive holders are alone; shared holders coexist with other shared holders."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"


class DeadlockPolicy(StrEnum):
    """How a wait-for cycle is broken (see docs/locks.md, "Deadlocks")."""

    ABORT_WAITER = "abort-waiter"
    PREEMPT_HOLDER = "preempt-holder"


class RefusalReason(StrEnum):
    """Why a queued request ended without a grant."""

    TIMEOUT = "timeout"
    DEADLOCK = "deadlock"
    CANCELLED = "cancelled"
    SESSION_ENDED = "session-ended"


class ReleaseCause(StrEnum):
    """Why a holder stopped holding (expiry and preemption have their own events)."""

    RELEASED = "released"
    SESSION_ENDED = "session-ended"
    ADMIN = "admin"
    ABANDONED = "abandoned"
    """Granted to a request whose caller had gone (cancelled, or the grant reached it too late)."""


def compatible(a: LockMode, b: LockMode) -> bool:
    """Whether two holders in these modes may hold the same resource at once."""
    return a is LockMode.SHARED and b is LockMode.SHARED


@dataclass(frozen=True, slots=True)
class AcquireRequest:
    """One acquire call, already validated and clamped by the caller's settings."""

    resource: str
    mode: LockMode
    owner: str
    session: str
    lease_s: float
    priority: int
    wait_s: float
    """0 = try once; the request is refused with TIMEOUT when not granted within this time."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lock. `token` is the fencing token: present it to the protected resource."""

    resource: str
    token: int
    owner: str
    session: str
    mode: LockMode
    priority: int
    lease_s: float
    granted_at: float
    expires_at: float
    """On the monotonic clock the state was given (`trio.current_time()` in the service)."""


@dataclass(frozen=True, slots=True)
class WaiterView:
    """A queued request, for inspection."""

    request_id: int
    resource: str
    owner: str
    session: str
    mode: LockMode
    priority: int
    effective_priority: int
    enqueued_at: float
    deadline: float


@dataclass(frozen=True, slots=True)
class ResourceView:
    """One resource: its holders, its queue in service order, and the last token issued."""

    resource: str
    holders: tuple[Lease, ...]
    waiters: tuple[WaiterView, ...]
    last_token: int


@dataclass(frozen=True, slots=True)
class LockQueued:
    """A request could not be granted at once and waits (position counts from 0)."""

    request_id: int
    resource: str
    owner: str
    position: int


@dataclass(frozen=True, slots=True)
class LockGranted:
    request_id: int
    lease: Lease


@dataclass(frozen=True, slots=True)
class LockRefused:
    request_id: int
    resource: str
    owner: str
    session: str
    reason: RefusalReason
    cycle: tuple[str, ...] = ()
    """For DEADLOCK: the owners on the wait-for cycle, starting with the victim."""


@dataclass(frozen=True, slots=True)
class LockRefreshed:
    lease: Lease


@dataclass(frozen=True, slots=True)
class LockExpired:
    lease: Lease


@dataclass(frozen=True, slots=True)
class LockPreempted:
    """The lease was revoked to break a deadlock; its token is stale from now on."""

    lease: Lease
    cycle: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LockReleased:
    lease: Lease
    cause: ReleaseCause


LockEvent = (
    LockQueued | LockGranted | LockRefused | LockRefreshed | LockExpired | LockPreempted | LockReleased
)

ENDED_EVENTS = (LockExpired, LockPreempted, LockReleased)
"""Events after which a lease is no longer held."""


def refusal_error(reason: RefusalReason, resource: str, cycle: tuple[str, ...] = ()) -> NodeError:
    """The NodeError an acquire call raises when its request was refused."""
    if reason is RefusalReason.DEADLOCK:
        return Deadlock(
            f"waiting for {resource!r} would deadlock: {' -> '.join(cycle)}",
            resource=resource,
            cycle=list(cycle),
        )
    if reason is RefusalReason.TIMEOUT:
        return Aborted(f"lock {resource!r} not granted in time", resource=resource, reason=reason.value)
    return Aborted(
        f"lock request for {resource!r} ended: {reason.value}", resource=resource, reason=reason.value
    )
