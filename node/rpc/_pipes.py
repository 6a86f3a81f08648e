"""Bounded one-way message pipes between the island thread and Trio, with credit flow control.

Theory of operation
-------------------
A pipe carries messages of one stream in one direction. Its two ends live on different threads
and each keeps its own state; they talk only through posted jobs (`_mailbox`):

* The sending end starts with `window` credits and spends one per message. With no credit left it
  waits: backpressure, never a silent drop (spike-stack.md §9.7).
* The receiving end counts messages its user has consumed and gives credits back in one job per
  `window // 2` messages, so a busy pipe costs one credit job per half window, not one per message.
  At most `window` messages are ever in flight, hence every pipe's buffer is bounded.
* Closing the sender posts an end-of-stream marker (optionally with an error) behind the data, so
  the receiver sees every message first. Closing the receiver ("receiver gone") makes the sender's
  next or pending send fail with `BrokenResourceError`, so a producer never blocks forever on a
  reader that left.

`ToIsland` is written by a Trio task (a `trio.abc.SendChannel`) and read by an island coroutine;
`ToTrio` is written by an island coroutine and read by a Trio task (a `trio.abc.ReceiveChannel`).
Trio-side methods are checkpoints like Trio's own memory channels.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import trio

T = TypeVar("T")


class _Posts(Protocol):
    def to_trio(self, fn: Callable[..., object], *args: Any) -> None: ...

    def to_island(self, fn: Callable[..., object], *args: Any) -> None: ...


class EndOfPipe:
    """Returned by `ToIsland.get` once the sender closed and every message was read."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def _credit_batch(window: int) -> int:
    return max(1, window // 2)


class ToIsland(Generic[T]):
    """A pipe from a Trio task to an island coroutine."""

    def __init__(self, posts: _Posts, loop: asyncio.AbstractEventLoop, window: int) -> None:
        self._posts = posts
        self._loop = loop
        self._window = window
        # Trio thread only.
        self._credits = window
        self._credit_wait: trio.Event | None = None
        self._send_closed = False
        self._receiver_gone = False
        # Island thread only.
        self._items: deque[T] = deque()
        self._end: EndOfPipe | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._unacked = 0
        self._detached = False
        self.sender = _TrioSender(self)

    # Trio side -----------------------------------------------------------------------------
    async def _send(self, value: T) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if self._send_closed:
                raise trio.ClosedResourceError("the sending end was closed")
            if self._receiver_gone:
                raise trio.BrokenResourceError("the receiving end is gone")
            if self._credits:
                break
            self._credit_wait = trio.Event()
            await self._credit_wait.wait()
            waited = True
        self._credits -= 1
        self._posts.to_island(self._island_push, value)
        if not waited:  # waiting was the checkpoint already
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _send_nowait(self, value: T) -> None:
        if self._send_closed:
            raise trio.ClosedResourceError("the sending end was closed")
        if self._receiver_gone:
            raise trio.BrokenResourceError("the receiving end is gone")
        if not self._credits:
            raise trio.WouldBlock
        self._credits -= 1
        self._posts.to_island(self._island_push, value)

    def close_sender(self, error: BaseException | None = None) -> None:
        """End the stream (Trio side); idempotent. `error`, if any, is raised to the reader."""
        if self._send_closed:
            return
        self._send_closed = True
        self._posts.to_island(self._island_end, EndOfPipe(error))
        self._wake_sender()

    def _trio_credit(self, count: int) -> None:
        self._credits += count
        self._wake_sender()

    def _trio_receiver_gone(self) -> None:
        self._receiver_gone = True
        self._wake_sender()

    def _wake_sender(self) -> None:
        if self._credit_wait is not None:
            self._credit_wait.set()
            self._credit_wait = None

    # Island side ---------------------------------------------------------------------------
    def _island_push(self, value: T) -> None:
        self._items.append(value)
        self._wake_reader()

    def _island_end(self, end: EndOfPipe) -> None:
        if self._end is None or self._end.error is None:
            self._end = end
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> T | EndOfPipe:
        """The next message, or `EndOfPipe` once the sender closed and all was read (island)."""
        while not self._items:
            if self._end is not None:
                return self._end
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def get_nowait(self) -> T | None:
        """The next message if one is buffered, else None (island)."""
        return self._items.popleft() if self._items else None

    def ack(self, count: int = 1) -> None:
        """Mark messages as consumed, giving their credits back in batches (island)."""
        self._unacked += count
        if self._unacked >= _credit_batch(self._window):
            self._posts.to_trio(self._trio_credit, self._unacked)
            self._unacked = 0

    def abort(self, error: BaseException) -> None:
        """End reading now: drop what is buffered, `get` returns `error` at once (island)."""
        self._items.clear()
        self._island_end(EndOfPipe(error))
        self.detach()

    def detach(self) -> None:
        """The reader leaves: further sends fail with BrokenResourceError (island; idempotent)."""
        if not self._detached:
            self._detached = True
            self._posts.to_trio(self._trio_receiver_gone)


class _TrioSender(trio.abc.SendChannel[T]):
    """The Trio end of a `ToIsland` pipe."""

    def __init__(self, pipe: ToIsland[T]) -> None:
        self._pipe = pipe

    async def send(self, value: T) -> None:
        await self._pipe._send(value)

    def send_nowait(self, value: T) -> None:
        """Send without waiting (no checkpoint); trio.WouldBlock while the window is used up."""
        self._pipe._send_nowait(value)

    async def aclose(self) -> None:
        self._pipe.close_sender()
        await trio.lowlevel.checkpoint()


class ToTrio(Generic[T]):
    """A pipe from an island coroutine to a Trio task."""

    def __init__(self, posts: _Posts, loop: asyncio.AbstractEventLoop, window: int) -> None:
        self._posts = posts
        self._loop = loop
        self._window = window
        # Island thread only.
        self._credits = window
        self._credit_wait: asyncio.Future[None] | None = None
        self._send_closed = False
        self._receiver_gone = False
        # Trio thread only.
        self._items: deque[T] = deque()
        self._end: EndOfPipe | None = None
        self._reader: trio.lowlevel.Task | None = None
        self._consumed = 0
        self._receive_closed = False
        self.receiver = _TrioReceiver(self)

    # Island side ---------------------------------------------------------------------------
    async def put(self, value: T) -> bool:
        """Send one message, waiting for credit; False when the Trio reader is gone (island)."""
        while not self._credits:
            if self._receiver_gone:
                return False
            self._credit_wait = self._loop.create_future()
            try:
                await self._credit_wait
            finally:
                self._credit_wait = None
        if self._receiver_gone or self._send_closed:
            return False
        self._credits -= 1
        self._posts.to_trio(self._trio_push, value)
        return True

    def close(self, error: BaseException | None = None) -> None:
        """End the stream (island); idempotent. `error`, if any, is raised to the Trio reader."""
        if not self._send_closed:
            self._send_closed = True
            self._posts.to_trio(self._trio_end, EndOfPipe(error))

    def _island_credit(self, count: int) -> None:
        self._credits += count
        self._wake_writer()

    def _island_receiver_gone(self) -> None:
        self._receiver_gone = True
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._credit_wait is not None and not self._credit_wait.done():
            self._credit_wait.set_result(None)

    # Trio side -----------------------------------------------------------------------------
    def _trio_push(self, value: T) -> None:
        self._items.append(value)
        self._wake_reader()

    def _trio_end(self, end: EndOfPipe) -> None:
        self._end = end
        self._wake_reader()

    def _wake_reader(self) -> None:
        # A direct reschedule, not a trio.Event per wait: this runs once per message.
        reader = self._reader
        if reader is not None:
            self._reader = None
            trio.lowlevel.reschedule(reader)

    def _abort_wait(self, _: object) -> trio.lowlevel.Abort:
        self._reader = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _receive(self) -> T:
        if self._items:  # like Trio's memory channels: a checkpoint, one scheduling round
            await trio.lowlevel.checkpoint_if_cancelled()
            value = self._take()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return value
        while not self._items:  # waiting is the checkpoint; no second round after waking
            if self._receive_closed:
                raise trio.ClosedResourceError("the receiving end was closed")
            if self._end is not None:
                await trio.lowlevel.checkpoint()
                if self._end.error is not None:
                    raise self._end.error
                raise trio.EndOfChannel
            if self._reader is not None:
                raise trio.BusyResourceError("another task is already receiving")
            self._reader = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
        return self._take()

    def _receive_nowait(self) -> T:
        if self._receive_closed:
            raise trio.ClosedResourceError("the receiving end was closed")
        if self._items:
            return self._take()
        if self._end is not None:
            if self._end.error is not None:
                raise self._end.error
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def _take(self) -> T:
        value = self._items.popleft()
        self._consumed += 1
        if self._consumed >= _credit_batch(self._window):
            self._posts.to_island(self._island_credit, self._consumed)
            self._consumed = 0
        return value

    def close_receiver(self) -> None:
        """The Trio reader leaves (idempotent): the island writer's `put` returns False."""
        if not self._receive_closed:
            self._receive_closed = True
            self._items.clear()
            self._posts.to_island(self._island_receiver_gone)
            self._wake_reader()


class _TrioReceiver(trio.abc.ReceiveChannel[T]):
    """The Trio end of a `ToTrio` pipe."""

    def __init__(self, pipe: ToTrio[T]) -> None:
        self._pipe = pipe

    async def receive(self) -> T:
        return await self._pipe._receive()

    def receive_nowait(self) -> T:
        """A message that has already arrived (no checkpoint); trio.WouldBlock when none has."""
        return self._pipe._receive_nowait()

    async def aclose(self) -> None:
        self._pipe.close_receiver()
        await trio.lowlevel.checkpoint()
