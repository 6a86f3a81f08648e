"""Lock calls of the device client (lock frames 0x20-0x2F, docs/protocol.md §7, docs/locks.md).

    lease = await client.locks.acquire("printer", lease_s=30, wait_s=5)   # LockGranted
    await client.locks.refresh("printer", lease.token)
    await client.locks.release("printer", lease.token)

Requests are frames on the client's session; answers come back with the request's message id:
ACQUIRE → QUEUED* then GRANTED (returned) or REFUSED (`LockRefusedError`); RELEASE → RELEASED;
REFRESH → REFRESHED; any of them may be answered NACK (`NackError`). Notices about a lease the node
ended (EXPIRED, PREEMPTED, RELEASED with a cause other than `released`) carry the message id of
the ACQUIRE that obtained it and arrive on `notices` (bounded: the oldest unread are kept, newer
ones counted in `notices_dropped`). Locks belong to the device: when the connection drops and the
client reconnects within the node's `locks.session_grace_s`, they are still held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

import wire.device as wd
from node.client._types import ClientError, ConnectionLost, Pending
from node.client._ws import WsClosed
from wire import DecodeError
from wire.device import FrameView, decode_lock_untrusted, encode_control

if TYPE_CHECKING:
    from node.client._client import DeviceClient

LockNotice = wd.LockExpired | wd.LockPreempted | wd.LockReleased
"""A lease the node ended on its own (expiry, preemption, admin or session release)."""
NOTICE_BUFFER = 256


class LockRefusedError(ClientError):
    """The node answered an ACQUIRE with REFUSED: `reason` (aborted, deadlock, ...) and `cause`
    (timeout, busy, session-ended, ...); `cycle` names the deadlock's owners."""

    def __init__(self, refused: wd.LockRefused) -> None:
        cause = f" ({refused.cause})" if refused.cause else ""
        detail = f": {refused.detail}" if refused.detail else ""
        super().__init__(f"lock {refused.resource!r} refused: {refused.reason}{cause}{detail}")
        self.resource = refused.resource
        self.reason = refused.reason
        self.cause = refused.cause
        self.cycle = refused.cycle


@dataclass
class _Call(Pending[wd.ControlMessage]):
    answers: tuple[int, ...] = ()
    on_queued: Callable[[int], None] | None = None


class LockCalls:
    """The lock requests of one DeviceClient (`client.locks`)."""

    def __init__(self, client: DeviceClient) -> None:
        self._client = client
        self._calls: dict[int, _Call] = {}
        self._notices_send, self.notices = trio.open_memory_channel[LockNotice](NOTICE_BUFFER)
        self.notices_dropped = 0

    async def acquire(
        self,
        resource: str,
        *,
        mode: str | None = None,
        lease_s: float | None = None,
        priority: int | None = None,
        wait_s: float | None = None,
        owner: str | None = None,
        on_queued: Callable[[int], None] | None = None,
    ) -> wd.LockGranted:
        """Wait for the lock (at most `wait_s`, default the node's maximum); the granted lease.

        Raises LockRefusedError (timeout, busy, deadlock, ...), NackError, ConnectionLost.
        """
        request = wd.LockAcquire(resource, mode, lease_s, priority, wait_s, owner)
        limit = self._client.settings.lock_wait_max_s if wait_s is None else wait_s
        answer = await self._request(request, (wd.LockGranted.TYPE, wd.LockRefused.TYPE), limit, on_queued)
        if isinstance(answer, wd.LockRefused):
            raise LockRefusedError(answer)
        assert isinstance(answer, wd.LockGranted)
        return answer

    async def release(self, resource: str, token: int) -> wd.LockReleased:
        """Give lease `token` back. NackError not-found when it has already ended."""
        answer = await self._request(wd.LockRelease(resource, token), (wd.LockReleased.TYPE,), 0.0, None)
        assert isinstance(answer, wd.LockReleased)
        return answer

    async def refresh(self, resource: str, token: int, lease_s: float | None = None) -> wd.LockRefreshed:
        """Extend lease `token` to now + `lease_s` (default: its lease). NackError once it ended."""
        request = wd.LockRefresh(resource, token, lease_s)
        answer = await self._request(request, (wd.LockRefreshed.TYPE,), 0.0, None)
        assert isinstance(answer, wd.LockRefreshed)
        return answer

    async def _request(
        self,
        request: wd.ControlMessage,
        answers: tuple[int, ...],
        wait_s: float,
        on_queued: Callable[[int], None] | None,
    ) -> wd.ControlMessage:
        client = self._client
        ws = client._ws
        if ws is None:
            raise ConnectionLost("not connected")
        message_id = client._new_id()
        call = self._calls[message_id] = _Call(answers=answers, on_queued=on_queued)
        try:
            frame = encode_control(request, message_id=message_id, source=client.device_id)
            try:
                await ws.send(frame, then_waits=True)
            except WsClosed:
                raise ConnectionLost("the connection closed while sending") from None
            client.deadlines.add(trio.current_time() + wait_s + client.settings.ack_timeout_s, call)
            await call.done.wait()
        finally:
            del self._calls[message_id]
            call.settle(ConnectionLost("the call was cancelled"))  # if still open: off the timer
        return call.outcome()  # TooSlowError when the deadline settled it

    # -- the client's reader ------------------------------------------------------------------
    def on_frame(self, frame: FrameView) -> None:
        """A lock frame from the node: an answer to a waiting call, or a notice."""
        try:
            message = decode_lock_untrusted(frame)
        except DecodeError:
            return  # a newer node's message this client does not understand
        call = self._calls.get(frame.message_id)
        if call is not None and not call.done.is_set():
            if isinstance(message, wd.LockQueued):
                if call.on_queued is not None:
                    call.on_queued(message.position)
                return
            if message.TYPE in call.answers:
                call.settle(message)
                return
        if isinstance(message, wd.LockExpired | wd.LockPreempted | wd.LockReleased):
            try:
                self._notices_send.send_nowait(message)
            except trio.WouldBlock:
                self.notices_dropped += 1

    def fail(self, message_id: int, error: BaseException) -> bool:
        """A NACK (or lost connection) for a waiting call; False when no call waits for it."""
        call = self._calls.get(message_id)
        return call is not None and call.settle(error)

    def fail_all(self, error: BaseException) -> None:
        for message_id in list(self._calls):
            self.fail(message_id, error)
