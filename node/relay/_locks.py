"""Lock frames on device sessions (docs/protocol.md §7) and the book of leases granted on surfaces.

Identity: on a device session (WebSocket or gRPC Connect) the lock **owner** is the registered
device id, or `<device id>/<owner label>` when the ACQUIRE names one (an owner is one thread of
control for deadlock detection: give concurrent workers their own labels). The lock **session**
is the device id, so a device that reconnects — on either surface — within `locks.session_grace_s`
keeps its locks (`resume_session` when it registers again); when its last connection ends without
a successor, `end_session` refuses its waits at once and releases its locks after the grace.
A device releases and refreshes leases of its own identity (its id, or its id + "/label").

Answers: an ACQUIRE that passes the frame checks runs as a task of the connection and ends with
GRANTED, or REFUSED when the lock service decided against it (timeout or busy → `aborted`,
deadlock victim → `deadlock`, session ended, lost before delivery); every other error (invalid
input, permission, limits, unavailable) is a NACK with the error's reason. RELEASE is answered
RELEASED, REFRESH REFRESHED, errors NACK. QUEUED may come any number of times before the end.
A free local lock's ACQUIRE and a local RELEASE are answered in line; an ACQUIRE that waits and a
RELEASE that waits (a cluster resource's etcd delete, a durable commit) run as tasks of the
connection, so frames read after them are not held up: their answers may come after answers to
later frames, and a lock stays held until its RELEASED is sent.
Notices: when a lease granted on a session ends otherwise (expiry, preemption, admin or session
release), the device's current session gets EXPIRED / PREEMPTED / RELEASED carrying the message id
of the ACQUIRE that obtained it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

import wire.device as wd
from node.auth import Action
from node.clock import WallClock
from node.errors import (
    Aborted,
    Deadlock,
    NodeError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from node.locks import (
    Lease,
    LockEvent,
    LockExpired,
    LockMode,
    LockPreempted,
    LockQueued,
    LockReleased,
    LockService,
)
from node.locks import ReleaseCause as Cause
from node.router import nack_frame
from wire.device import ControlMessage, FrameView, decode_lock_untrusted, encode_control
from wire.ws import CLOSE_POLICY_VIOLATION

if TYPE_CHECKING:
    from node.relay._link import DeviceLink
    from node.relay.service import RelayService

MAX_PENDING_CALLS = 256
"""Lock calls one connection may have waiting at once: ACQUIREs that wait, and RELEASEs that wait
for etcd or a commit (more: NACK resource-exhausted)."""

Listener = Callable[[LockEvent], None]


@dataclass(eq=False)
class _Entry:
    owner: str
    listeners: list[Listener] = field(default_factory=list)


class LeaseBook:
    """Leases granted through the node's surfaces: their owners, and who to tell when they end.

    `publish` is the lock service's event hook (called synchronously for every event), so a
    listener registered right after a grant (no await in between) never misses the end.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], _Entry] = {}

    def granted(self, lease: Lease, listener: Listener | None = None) -> Callable[[], None]:
        """Record a lease handed to a caller; returns a function that removes `listener`."""
        entry = self._entries.setdefault((lease.resource, lease.token), _Entry(lease.owner))
        if listener is None:
            return _nothing
        entry.listeners.append(listener)
        return partial(_remove, entry.listeners, listener)

    def publish(self, event: LockEvent) -> None:
        """The lock service's event hook: tell the listeners of a lease that ended."""
        if isinstance(event, LockExpired | LockPreempted | LockReleased):
            entry = self._entries.pop((event.lease.resource, event.lease.token), None)
            if entry is not None:
                for listener in list(entry.listeners):
                    listener(event)

    async def owned(self, locks: LockService, resource: str, token: int, identity: str) -> str:
        """The owner name of lease `token` on `resource` if it belongs to `identity`.

        Raises NotFound (no such lease held) or PermissionDenied (another identity's lease).
        """
        entry = self._entries.get((resource, token))
        owner = entry.owner if entry is not None else await _holder(locks, resource, token)
        if owner != identity and not owner.startswith(identity + "/"):
            raise PermissionDenied(f"lease {token} on {resource!r} belongs to another owner")
        return owner

    def __len__(self) -> int:
        return len(self._entries)


def _nothing() -> None:
    return None


def _remove(listeners: list[Listener], listener: Listener) -> None:
    if listener in listeners:
        listeners.remove(listener)


async def _holder(locks: LockService, resource: str, token: int) -> str:
    try:
        view = await locks.get(resource)
    except NotFound:
        view = None
    for lease in view.holders if view is not None else ():
        if lease.token == token:
            return lease.owner
    raise NotFound(f"no lease {token} on {resource!r}", resource=resource)


def owner_name(identity: str, label: str | None) -> str:
    """The lock owner for an identity and an optional label."""
    return identity if not label else f"{identity}/{label}"


def refusal_cause(exc: NodeError, wait_s: float | None) -> str | None:
    """The finer reason of an Aborted refusal (`busy` for a try-lock that found the lock held)."""
    cause = exc.extra.get("reason")
    if cause == "timeout" and wait_s == 0:
        return "busy"
    return str(cause) if cause is not None else None


class RelayLocks:
    """The lock frame handlers of a relay (install once, after the lock service is up)."""

    def __init__(self, relay: RelayService, locks: LockService, book: LeaseBook, wall: WallClock) -> None:
        self.relay = relay
        self.locks = locks
        self.book = book
        self.wall = wall
        self._pending: dict[DeviceLink, int] = {}
        self._releasing: set[tuple[str, int]] = set()

    def install(self) -> None:
        """Register the handlers and the session hooks with the relay."""
        self.relay.set_handler(wd.LockAcquire.TYPE, self.on_acquire)
        self.relay.set_handler(wd.LockRelease.TYPE, self.on_release)
        self.relay.set_handler(wd.LockRefresh.TYPE, self.on_refresh)
        self.relay.on_session_opened(self._opened)
        self.relay.on_link_closed(self._closed)

    # -- sessions -----------------------------------------------------------------------------
    def _opened(self, link: DeviceLink) -> None:
        assert link.session is not None
        self.locks.resume_session(link.session.device_text)

    def _closed(self, link: DeviceLink) -> None:
        self._pending.pop(link, None)
        session = link.session
        if session is None:
            return
        current = self.relay.table.by_text.get(session.device_text)
        if current is None or current is session:  # no newer connection of the device took over
            self.locks.end_session(session.device_text)

    # -- handlers -----------------------------------------------------------------------------
    async def on_acquire(self, link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
        """ACQUIRE: checks here (NACK); a free local lock is granted in line (the answer joins
        this batch's replies), any other acquire waits in a task of the connection."""
        message = decode_lock_untrusted(frame)
        assert isinstance(message, wd.LockAcquire)
        identity = _identity(link)
        mode = LockMode(message.mode or LockMode.EXCLUSIVE)
        try:
            lease = self.locks.acquire_at_once(message.resource, **_terms(identity, message, mode))
        except NodeError as exc:
            replies.append(self._answer(link, frame.message_id, identity, message, exc))
            return
        if lease is not None:  # a free local lock: granted in line, with this batch's replies
            replies.append(self._answer(link, frame.message_id, identity, message, lease))
            return
        self._start(link, self._acquire, link, frame.message_id, identity, message, mode)

    def _start(self, link: DeviceLink, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run a lock call that waits as a task of the connection (at most MAX_PENDING_CALLS)."""
        pending = self._pending.get(link, 0)
        if pending >= MAX_PENDING_CALLS:
            raise ResourceExhausted(f"more than {MAX_PENDING_CALLS} lock calls waiting on this connection")
        if link.nursery is None or link.closing:
            raise Unavailable("the connection is closing")
        self._pending[link] = pending + 1
        link.nursery.start_soon(fn, *args)

    def _send_now(self, link: DeviceLink, frame: bytes) -> None:
        """Send an answer from a lock task: written in line (the router's FlushHub) when the
        writer is idle, so the answer costs no wake-up of the connection's writer task."""
        hub = self.relay.hub
        if hub.active:  # (inside someone's routing step: it flushes)
            link.send(frame)
            return
        hub.active = True
        try:
            link.send(frame)
        finally:
            hub.flush()

    def _done(self, link: DeviceLink) -> None:
        if link in self._pending:
            self._pending[link] -= 1

    async def _acquire(
        self, link: DeviceLink, message_id: int, identity: str, msg: wd.LockAcquire, mode: LockMode
    ) -> None:
        try:
            answer = await self._outcome(link, message_id, identity, msg, mode)
        finally:
            self._done(link)
        self._send_now(link, answer)

    async def _outcome(
        self, link: DeviceLink, message_id: int, identity: str, msg: wd.LockAcquire, mode: LockMode
    ) -> bytes:
        """Run the acquire; the answer frame (GRANTED, REFUSED or NACK)."""

        def queued(event: LockQueued) -> None:
            link.send(self._frame(wd.LockQueued(msg.resource, event.position), message_id, link))

        try:
            lease = await self.locks.acquire(msg.resource, **_terms(identity, msg, mode), on_queued=queued)
        except NodeError as exc:
            return self._answer(link, message_id, identity, msg, exc)
        return self._answer(link, message_id, identity, msg, lease)

    def _answer(
        self, link: DeviceLink, message_id: int, identity: str, msg: wd.LockAcquire, got: Lease | NodeError
    ) -> bytes:
        """The answer to an ACQUIRE: GRANTED (and the lease booked), REFUSED or NACK."""
        if isinstance(got, Aborted | Deadlock):
            return self._frame(self._refused(msg, got), message_id, link)
        if isinstance(got, NodeError):
            return self._nack(link, message_id, got)
        self.book.granted(got, partial(self._ended, identity, message_id))
        return self._frame(self._granted(got), message_id, link)

    async def on_release(self, link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
        """RELEASE: answered RELEASED; NACK not-found when the lease has already ended. A release
        that waits for something (an etcd delete, a durable commit) runs as a task of the
        connection, so the frames read after it are not held up behind it."""
        message = decode_lock_untrusted(frame)
        assert isinstance(message, wd.LockRelease)
        owner = await self.book.owned(self.locks, message.resource, message.token, _identity(link))
        if self.locks.releases_at_once(message.resource):
            replies.append(await self._release(link, frame.message_id, message, owner))
            return
        self._start(link, self._release_later, link, frame.message_id, message, owner)

    async def _release_later(
        self, link: DeviceLink, message_id: int, message: wd.LockRelease, owner: str
    ) -> None:
        try:
            answer = await self._release(link, message_id, message, owner)
        finally:
            self._done(link)
        self._send_now(link, answer)

    async def _release(self, link: DeviceLink, message_id: int, message: wd.LockRelease, owner: str) -> bytes:
        """Run the release; the answer frame (RELEASED, or NACK)."""
        key = (message.resource, message.token)
        self._releasing.add(key)  # the holder asked: no RELEASED notice besides the answer
        try:
            await self.locks.release(message.resource, message.token, owner=owner)
        except NodeError as exc:
            return self._nack(link, message_id, exc)
        finally:
            self._releasing.discard(key)
        answer = wd.LockReleased(message.resource, message.token, Cause.RELEASED.value)
        return self._frame(answer, message_id, link)

    async def on_refresh(self, link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
        """REFRESH: answered REFRESHED with the new deadline; NACK not-found once it has ended."""
        message = decode_lock_untrusted(frame)
        assert isinstance(message, wd.LockRefresh)
        owner = await self.book.owned(self.locks, message.resource, message.token, _identity(link))
        lease = await self.locks.refresh(
            message.resource, message.token, owner=owner, lease_s=message.lease_s
        )
        answer = wd.LockRefreshed(
            lease.resource, lease.token, lease.lease_s, self.wall_time(lease.expires_at)
        )
        replies.append(self._frame(answer, frame.message_id, link))

    # -- notices ------------------------------------------------------------------------------
    def _ended(self, device_id: str, message_id: int, event: LockEvent) -> None:
        """A lease granted on a session ended: tell the device's current session."""
        notice: ControlMessage
        if isinstance(event, LockExpired):
            notice = wd.LockExpired(event.lease.resource, event.lease.token)
        elif isinstance(event, LockPreempted):
            notice = wd.LockPreempted(event.lease.resource, event.lease.token, event.cycle or None)
        elif isinstance(event, LockReleased):
            key = (event.lease.resource, event.lease.token)
            if event.cause is Cause.RELEASED and key in self._releasing:
                return
            notice = wd.LockReleased(event.lease.resource, event.lease.token, event.cause.value)
        else:
            return
        session = self.relay.table.by_text.get(device_id)
        if session is None:
            return  # gone (the lease ended in its grace period): nobody to tell
        frame = encode_control(notice, message_id=message_id, destination=session.device_id)
        if not session.outbox.put_control(frame):
            session.close(CLOSE_POLICY_VIOLATION, "not reading: outbox full")

    # -- frames -------------------------------------------------------------------------------
    def wall_time(self, monotonic: float) -> float:
        """A deadline on Trio's clock as Unix time."""
        return self.wall.now() + (monotonic - trio.current_time())

    def _granted(self, lease: Lease) -> wd.LockGranted:
        return wd.LockGranted(
            resource=lease.resource,
            token=lease.token,
            mode=lease.mode.value,
            lease_s=lease.lease_s,
            expires_at=self.wall_time(lease.expires_at),
            priority=lease.priority,
            owner=lease.owner,
        )

    @staticmethod
    def _refused(msg: wd.LockAcquire, exc: NodeError) -> wd.LockRefused:
        cycle = exc.extra.get("cycle")
        return wd.LockRefused(
            resource=msg.resource,
            reason=exc.code,
            cause=refusal_cause(exc, msg.wait_s),
            detail=exc.detail[:1024],
            cycle=tuple(str(c) for c in cycle) if cycle else None,
        )

    def _nack(self, link: DeviceLink, message_id: int, exc: NodeError) -> bytes:
        reason = wd.nack_reason_for_code(exc.code)
        nacks = self.relay.stats.nacks
        nacks[reason] = nacks.get(reason, 0) + 1
        return nack_frame(message_id, link.device_bytes, reason, exc.detail)

    @staticmethod
    def _frame(message: ControlMessage, message_id: int, link: DeviceLink) -> bytes:
        return encode_control(message, message_id=message_id, destination=link.device_bytes)


def _terms(identity: str, msg: wd.LockAcquire, mode: LockMode) -> dict[str, Any]:
    """The keyword arguments of `LockService.acquire` for an ACQUIRE frame."""
    return {
        "owner": owner_name(identity, msg.owner),
        "session": identity,
        "mode": mode,
        "lease_s": msg.lease_s,
        "priority": msg.priority,
        "wait_s": msg.wait_s,
    }


def _identity(link: DeviceLink) -> str:
    """The registered device (lock frames are admitted only after REGISTER)."""
    principal = link.principal
    assert principal is not None
    principal.require(Action.LOCK)
    assert link.session is not None
    return link.session.device_text
