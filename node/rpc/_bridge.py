"""The bounded, batched bridge between the gRPC island (asyncio on its own thread) and Trio.

Theory of operation
-------------------
Calls go both ways over the batched mailboxes of `_mailbox`:

* **Island → Trio** (`call`, `open_stream`): a gRPC handler on the island asks for a Trio
  function to run. The request is posted to Trio. A unary call's function is called right there,
  inside the hand-over (a `run_sync_soon` callback): a plain function that answers at once is
  done then, with no task and no cancel scope (it cannot wait, so there is nothing to cancel);
  when it returns an awaitable (an `async def` function always does), that is awaited by a task
  in the bridge's own nursery inside a cancel scope whose deadline is the gRPC call's remaining
  time. A call whose deadline has already passed always takes the task path, which answers
  DEADLINE_EXCEEDED at the first checkpoint. Either way the outcome is posted back and resolves
  the handler's future. A stream call always runs as a task and also gets pipes
  (`_pipes`): the Trio function receives a `trio.abc.SendChannel` (to the client) and, for
  bidirectional calls, a `trio.abc.ReceiveChannel` (from the client), both credit-limited.
* **Trio → island** (`run_on_island`, `start_island_job`): Trio code (the neighbour-service
  clients) asks for an asyncio coroutine to run on the island; its outcome is posted back.

Bounds and backpressure: at most `max_in_flight` island → Trio calls exist at once (counted from
admission until Trio reports the end); one more is refused at once with `ResourceExhausted`, the
gRPC answer RESOURCE_EXHAUSTED. Pipes hold at most `window` messages per direction. So every
mailbox is bounded by in-flight calls x (window + a few control jobs).

Cancellation and deadlines: the Trio task's scope has the gRPC deadline, so the Trio side stops by
itself when it passes (the handler answers DEADLINE_EXCEEDED). When the island handler is cancelled
(client went away, grpclib's own deadline, server closing), it posts a cancel and the Trio task's
scope is cancelled. `shutdown_call` ends a call with UNAVAILABLE (used to end long-lived streams
when the node drains). The Trio nursery is shielded from outside cancellation: the island decides
when in-flight calls end (drain, then `close`), so a node shutdown gives unary calls their grace.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar, overload

import outcome
import trio

from node.errors import ResourceExhausted, Unavailable
from node.rpc._mailbox import IslandOutbox, TrioOutbox
from node.rpc._pipes import EndOfPipe, ToIsland, ToTrio

T = TypeVar("T")
Out = TypeVar("Out")
In = TypeVar("In")

JOB_CANCEL_WAIT_S = 2.0
"""How long a cancelled Trio caller waits for its island job to acknowledge the cancellation."""


class DeadlineExceeded(Exception):
    """The call's deadline passed on the Trio side."""


def _shutting_down() -> outcome.Error:
    return outcome.Error(Unavailable("the node is shutting down"))


class _Call:
    """One island → Trio call; fields are owned by the thread named in the comment."""

    __slots__ = ("args", "cancel_result", "down", "fn", "future", "scope", "timeout_s", "up")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout_s: float | None,
        future: asyncio.Future[Any],
    ) -> None:
        self.fn = fn
        self.args = args
        self.timeout_s = timeout_s
        self.future = future  # island
        self.scope: trio.CancelScope | None = None  # Trio
        self.cancel_result: outcome.Outcome[Any] | None = None  # Trio
        self.down: ToIsland[Any] | None = None
        self.up: ToTrio[Any] | None = None


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


class _Job:
    """One Trio → island coroutine run."""

    __slots__ = ("args", "cancelled", "done", "fn", "result", "task")

    def __init__(self, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = trio.Event()  # Trio
        self.result: outcome.Outcome[Any] | None = None  # Trio
        self.task: asyncio.Task[Any] | None = None  # island
        self.cancelled = False  # island


class Bridge:
    """Both halves of the call machinery; each method says which thread may call it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        token: trio.lowlevel.TrioToken,
        *,
        max_in_flight: int,
        window: int,
    ) -> None:
        self.loop = loop
        self.max_in_flight = max_in_flight
        self.window = window
        self._island_out = IslandOutbox(loop, token)
        self._trio_out = TrioOutbox(loop)
        self.in_flight = 0  # island
        self._nursery: trio.Nursery | None = None  # Trio
        self._scope: trio.CancelScope | None = None  # Trio
        self._closing = False  # Trio
        self._island_stopped = False  # Trio
        self._jobs: set[_Job] = set()  # Trio

    def to_trio(self, fn: Callable[..., object], *args: Any) -> None:
        """Post `fn(*args)` to the Trio thread (island thread)."""
        self._island_out.post(fn, *args)

    def to_island(self, fn: Callable[..., object], *args: Any) -> None:
        """Post `fn(*args)` to the island loop (Trio thread)."""
        self._trio_out.post(fn, *args)

    def statistics(self) -> dict[str, int]:
        """Counters for /metrics: hand-overs and jobs in each direction, calls in flight."""
        return {
            "in_flight": self.in_flight,
            "to_trio_batches": self._island_out.batches,
            "to_trio_jobs": self._island_out.jobs,
            "to_island_batches": self._trio_out.batches,
            "to_island_jobs": self._trio_out.jobs,
        }

    # Island side: calls into Trio ------------------------------------------------------------
    def _admit(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float | None) -> _Call:
        if self.in_flight >= self.max_in_flight:
            raise ResourceExhausted(f"more than {self.max_in_flight} calls in flight")
        self.in_flight += 1
        return _Call(fn, args, timeout_s, self.loop.create_future())

    @overload
    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout_s: float | None) -> T: ...

    @overload
    async def call(self, fn: Callable[..., T | Awaitable[T]], *args: Any, timeout_s: float | None) -> T: ...

    async def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None) -> Any:
        """Run `fn(*args)` in Trio, awaiting its result if awaitable; return it (island thread).

        A plain `fn` runs inside the hand-over (no task): it must not block, and its result must
        not be awaitable.

        Raises:
            ResourceExhausted: too many calls in flight.
            DeadlineExceeded: `timeout_s` seconds passed on the Trio side.
            Exception: whatever `fn` raised.
        """
        call = self._admit(fn, args, timeout_s)
        self.to_trio(self._trio_start, call)
        try:
            return await call.future
        except asyncio.CancelledError:
            self.cancel(call)
            raise

    def open_stream(
        self,
        fn: Callable[..., Awaitable[None]],
        *args: Any,
        bidirectional: bool,
        timeout_s: float | None,
    ) -> StreamCall[Any, Any]:
        """Start `fn(*args, [receive_channel,] send_channel)` in Trio (island thread)."""
        call = self._admit(fn, (), timeout_s)
        down: ToIsland[Any] = ToIsland(self, self.loop, self.window)
        up: ToTrio[Any] | None = ToTrio(self, self.loop, self.window) if bidirectional else None
        call.down, call.up = down, up
        call.args = (*args, up.receiver, down.sender) if up is not None else (*args, down.sender)
        self.to_trio(self._trio_start, call)
        return StreamCall(self, call, down, up)

    def cancel(self, call: _Call) -> None:
        """Stop waiting for `call` and cancel its Trio task (island thread)."""
        call.future.cancel()
        if call.down is not None:
            call.down.detach()
        self.to_trio(self._trio_cancel, call, None)

    def shutdown_call(self, call: _Call) -> None:
        """End `call` with UNAVAILABLE because the node drains (island thread)."""
        self.to_trio(self._trio_cancel, call, _shutting_down())

    def _island_finish(self, call: _Call, result: outcome.Outcome[Any]) -> None:
        self.in_flight -= 1
        future = call.future
        if future.done():
            return
        if isinstance(result, outcome.Value):
            future.set_result(result.value)
        elif isinstance(result, outcome.Error):
            future.set_exception(result.error)

    # Trio side: running calls ----------------------------------------------------------------
    async def run_trio_side(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Host the calls' tasks until `close_trio_side`; shielded from outside cancellation."""
        self._trio_out.start()
        try:
            with trio.CancelScope(shield=True) as self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._trio_out.stop()

    def close_trio_side(self) -> None:
        """Refuse new calls and cancel the running ones (Trio thread)."""
        self._closing = True
        if self._scope is not None:
            self._scope.cancel()

    def _trio_start(self, call: _Call) -> None:
        if self._nursery is None or self._closing:
            self._trio_finish(call, _shutting_down())
            return
        name = getattr(call.fn, "__qualname__", None)
        if call.down is None and (call.timeout_s is None or call.timeout_s > 0):
            # A unary call runs inline; only an awaitable result costs a task (module docstring).
            try:
                result = call.fn(*call.args)
            except Exception as exc:
                self._trio_finish(call, outcome.Error(exc))
                return
            if not isinstance(result, Awaitable):
                self._trio_finish(call, outcome.Value(result))
                return
            call.fn, call.args = _await, (result,)
        self._nursery.start_soon(self._trio_run, call, name=name)

    async def _trio_run(self, call: _Call) -> None:
        result: outcome.Outcome[Any] = _shutting_down()
        try:
            timeout_s = call.timeout_s
            deadline = math.inf if timeout_s is None else trio.current_time() + timeout_s
            with trio.CancelScope(deadline=deadline) as scope:
                call.scope = scope
                if call.cancel_result is not None:
                    scope.cancel()
                try:
                    result = outcome.Value(await call.fn(*call.args))
                except Exception as exc:
                    result = outcome.Error(exc)
            if scope.cancelled_caught:
                result = call.cancel_result or outcome.Error(DeadlineExceeded("deadline exceeded"))
        finally:
            self._trio_finish(call, result)

    def _trio_cancel(self, call: _Call, result: outcome.Outcome[Any] | None) -> None:
        if call.cancel_result is None:
            call.cancel_result = result or _shutting_down()
        if call.scope is not None:
            call.scope.cancel()

    def _trio_finish(self, call: _Call, result: outcome.Outcome[Any]) -> None:
        if call.down is not None:
            call.down.close_sender()
        if call.up is not None:
            call.up.close_receiver()
        self.to_island(self._island_finish, call, result)

    # Trio side: running coroutines on the island ---------------------------------------------
    async def run_on_island(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run `await fn(*args)` on the island loop and return its result (Trio thread)."""
        job = self.start_island_job(fn, *args)
        try:
            await job.done.wait()
        except trio.Cancelled:
            self.cancel_island_job(job)
            with trio.CancelScope(shield=True), trio.move_on_after(JOB_CANCEL_WAIT_S):
                await job.done.wait()
            raise
        assert job.result is not None
        return job.result.unwrap()  # type: ignore[no-any-return]

    def start_island_job(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> _Job:
        """Start `fn(*args)` on the island; `job.done` is set with `job.result` (Trio thread)."""
        job = _Job(fn, args)
        if self._island_stopped:
            job.result = outcome.Error(Unavailable("the gRPC island is stopped"))
            job.done.set()
            return job
        self._jobs.add(job)
        self.to_island(self._island_start_job, job)
        return job

    def cancel_island_job(self, job: _Job) -> None:
        """Cancel a job started with `start_island_job` (Trio thread)."""
        if not job.done.is_set():
            self.to_island(self._island_cancel_job, job)

    def _island_start_job(self, job: _Job) -> None:
        if job.cancelled:
            self.to_trio(self._trio_job_done, job, outcome.Error(Unavailable("cancelled")))
            return
        job.task = self.loop.create_task(job.fn(*job.args))
        job.task.add_done_callback(functools.partial(self._island_job_done, job))

    def _island_cancel_job(self, job: _Job) -> None:
        job.cancelled = True
        if job.task is not None:
            job.task.cancel()

    def _island_job_done(self, job: _Job, task: asyncio.Task[Any]) -> None:
        result: outcome.Outcome[Any]
        if task.cancelled():
            result = outcome.Error(Unavailable("cancelled"))
        elif (exc := task.exception()) is not None:
            result = outcome.Error(exc)
        else:
            result = outcome.Value(task.result())
        self.to_trio(self._trio_job_done, job, result)

    def _trio_job_done(self, job: _Job, result: outcome.Outcome[Any]) -> None:
        self._jobs.discard(job)
        job.result = result
        job.done.set()

    def trio_island_stopped(self) -> None:
        """The island loop has ended: fail every job still waiting for it (Trio thread)."""
        self._island_stopped = True
        for job in list(self._jobs):
            self._trio_job_done(job, outcome.Error(Unavailable("the gRPC island stopped")))


class StreamCall(Generic[Out, In]):
    """The island-side handle of a stream call (island thread only)."""

    def __init__(self, bridge: Bridge, call: _Call, down: ToIsland[Out], up: ToTrio[In] | None) -> None:
        self._bridge = bridge
        self._call = call
        self._down = down
        self._up = up

    async def next(self) -> Out | EndOfPipe:
        """The next message from Trio, or `EndOfPipe` when Trio is done sending."""
        return await self._down.get()

    def next_nowait(self) -> Out | None:
        """The next message from Trio if one is already here, else None."""
        return self._down.get_nowait()

    def ack(self, count: int = 1) -> None:
        """Messages were written to the client: give their credits back (batched)."""
        self._down.ack(count)

    async def put(self, value: In) -> bool:
        """Pass a client message to Trio (waits for credit); False if Trio stopped reading."""
        assert self._up is not None
        return await self._up.put(value)

    def close_input(self, error: BaseException | None = None) -> None:
        """The client finished sending (Trio's receive raises EndOfChannel, or `error`)."""
        if self._up is not None:
            self._up.close(error)

    async def result(self) -> None:
        """Wait for the Trio function's end; raises what it raised."""
        try:
            await self._call.future
        except asyncio.CancelledError:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Abandon the call: cancel the Trio task."""
        self._bridge.cancel(self._call)

    def abort(self, error: BaseException) -> None:
        """Fail the call with `error`: `next` returns it at once and the Trio task is cancelled."""
        self._down.abort(error)
        self.cancel()

    def shutdown(self) -> None:
        """End the call with UNAVAILABLE (node drain)."""
        self._bridge.shutdown_call(self._call)
