"""A session's bounded outbox: frames waiting for the session's one writer task.

A plain list of `bytes` objects (the very objects the sender's reader received) with message and
byte limits. Producers never wait: `offer` says no when a data frame does not fit, and the caller
decides (queue it durably, drop and count it). Frames the node produces itself (ACK, NACK, EVENT,
REGISTERED ...) may use `control_slack` more room, so a reply is not lost to a full outbox of data;
past that the session is not reading at all and is closed by its owner.

The writer waits in `take()` with `wait_task_rescheduled` and is woken by a direct `reschedule`:
cheaper than a memory channel per message (one list append, no channel hop), and the writer gets
everything queued since its last write in one batch, which becomes one `sendmsg`.

Inline flush: while a `FlushHub` is active (a reader routing one received batch, a synchronous
step), frames for an idle writer are not handed over at once; at the end of the step the hub
gives everything queued for that session to its `sink` (a write that never waits) from the
reader's own task. A relayed message then costs no task switch, and a batch
still becomes one `sendmsg` per destination. When the sink cannot write now (another write is in
progress) the writer is woken as before. Measured in docs/relay.md (section 10).
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class FlushHub:
    """Collects the outboxes that got frames during a synchronous routing step."""

    __slots__ = ("active", "touched")

    def __init__(self) -> None:
        self.active = False
        self.touched: list[Outbox] = []

    def flush(self) -> None:
        """End the step: write what the touched outboxes hold (or wake their writers)."""
        self.active = False
        if self.touched:
            touched, self.touched = self.touched, []
            for box in touched:  # Outbox.flush_inline, inlined: this runs once per routed batch
                box._deferred = False
                if box._waiter is None or not box.frames:
                    continue  # the writer is busy: it takes these when it comes back
                sink = box.sink
                if sink is not None and sink(box.frames):
                    box.frames = []
                    box.bytes = 0
                else:
                    box._wake()


class Outbox:
    """Frames for one session, with limits; exactly one task may `take`."""

    __slots__ = (
        "_deferred",
        "_waiter",
        "_woken",
        "bytes",
        "closed",
        "control_slack",
        "frames",
        "hub",
        "max_bytes",
        "max_messages",
        "sink",
    )

    def __init__(self, max_messages: int, max_bytes: int, *, control_slack: int = 256) -> None:
        self.frames: list[bytes] = []
        self.bytes = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.control_slack = control_slack
        self.closed = False
        self.hub: FlushHub | None = None
        self.sink: Callable[[list[bytes]], bool] | None = None  # writes without waiting, or False
        self._deferred = False
        self._waiter: trio.lowlevel.Task | None = None
        self._woken = False

    def __len__(self) -> int:
        return len(self.frames)

    def room(self) -> tuple[int, int]:
        """(messages, bytes) that still fit under the data limits."""
        return max(0, self.max_messages - len(self.frames)), max(0, self.max_bytes - self.bytes)

    def offer(self, frame: bytes) -> bool:
        """Queue a data frame if it fits under the limits; never waits."""
        frames = self.frames
        size = self.bytes + len(frame)
        if self.closed or len(frames) >= self.max_messages or size > self.max_bytes:
            return False
        frames.append(frame)
        self.bytes = size
        if self._waiter is not None:  # `_notify`, inlined (the hot path of every routed frame)
            hub = self.hub
            if hub is None or not hub.active:
                self._wake()
            elif not self._deferred:
                self._deferred = True
                hub.touched.append(self)
        return True

    def put_control(self, frame: bytes) -> bool:
        """Queue a frame the node produced; False when even the slack is used up (a stuck reader).

        Accepted after `close` too: the last answers (e.g. the NACK that explains the close) still
        go out before the connection closes.
        """
        if len(self.frames) >= self.max_messages + self.control_slack:
            return False
        self.frames.append(frame)
        self.bytes += len(frame)
        if self._waiter is not None:
            self._notify()
        return True

    def _notify(self) -> None:
        hub = self.hub
        if hub is not None and hub.active:
            if not self._deferred:
                self._deferred = True
                hub.touched.append(self)
        else:
            self._wake()

    def wake(self) -> None:
        """Make the writer's `take` return even without frames (it has other work, e.g. a drain)."""
        self._woken = True
        if self._waiter is not None:
            self._wake()

    def close(self) -> None:
        """Refuse further data frames and wake the writer so it can send the rest and finish."""
        self.closed = True
        self.wake()

    async def take(self) -> list[bytes]:
        """Wait until frames are queued (or `wake` was called, or it is closed); return them all."""
        if not self.frames and not self._woken and not self.closed:
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        self._woken = False
        frames = self.frames
        if frames:
            self.frames = []
            self.bytes = 0
        return frames

    def _wake(self) -> None:
        task, self._waiter = self._waiter, None
        assert task is not None
        trio.lowlevel.reschedule(task)

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED
