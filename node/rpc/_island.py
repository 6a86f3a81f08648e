"""The gRPC island: one thread running its own uvloop event loop, owned by a Trio task.

grpclib and betterproto2's stubs run only on asyncio; the node runs on Trio. The spike measured
that grpclib on a dedicated uvloop thread, bridged to Trio, both answers fastest and keeps
grpclib's long batch-processing stalls off the Trio thread (spike-stack.md §2.4). This module
starts and stops that thread from Trio: `open_island` starts it, waits until its loop runs, and on
exit (normal or cancelled) cancels the Trio side of the bridge, stops the loop, waits for the
thread to report it is done and joins it, so the thread's lifetime is inside the caller's nursery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import uvloop

from node.rpc._bridge import Bridge

T = TypeVar("T")
log = logging.getLogger("asgard.rpc")


class Island:
    """A thread with its own uvloop loop and the bridge to Trio. Create with `open_island`."""

    def __init__(self, *, name: str, max_in_flight: int, window: int) -> None:
        self.name = name
        self.loop = uvloop.new_event_loop()
        self.bridge = Bridge(
            self.loop,
            trio.lowlevel.current_trio_token(),
            max_in_flight=max_in_flight,
            window=window,
        )
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._thread_main, name=name, daemon=True)
        # Made here, not on the loop: a stop asked for before the loop runs is not lost.
        self._stop = asyncio.Event()
        self._started = trio.Event()
        self._stopped = trio.Event()
        self._failure: BaseException | None = None
        self.tasks_left_at_stop = 0
        """asyncio tasks still running when the loop was told to stop (0 after a clean shutdown)."""

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run the coroutine function `fn(*args)` on the island and return its result (Trio)."""
        return await self.bridge.run_on_island(fn, *args)

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the island loop soon, batched with other posts (Trio)."""
        self.bridge.to_island(fn, *args)

    def statistics(self) -> dict[str, int]:
        """Bridge counters (see `Bridge.statistics`)."""
        return self.bridge.statistics()

    # The island thread ---------------------------------------------------------------------
    def _thread_main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to Trio, which raises it
            self._failure = exc
        finally:
            try:
                self._teardown()
            finally:
                asyncio.set_event_loop(None)
                # The Trio run may be gone if the thread outlived `_close`'s timeout.
                with contextlib.suppress(trio.RunFinishedError):
                    self._token.run_sync_soon(self._trio_stopped)

    async def _main(self) -> None:
        self.bridge.to_trio(self._started.set)
        await self._stop.wait()

    def _teardown(self) -> None:
        loop = self.loop
        tasks = asyncio.all_tasks(loop)
        self.tasks_left_at_stop = len(tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        # One more iteration runs the outbox flush scheduled by the tasks' last posts.
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    # Trio side -----------------------------------------------------------------------------
    def _trio_stopped(self) -> None:
        self.bridge.trio_island_stopped()
        self._started.set()
        self._stopped.set()

    async def _wait_started(self) -> None:
        self._thread.start()
        await self._started.wait()
        if self._stopped.is_set():
            raise RuntimeError(f"the {self.name} thread failed to start") from self._failure

    async def _close(self, stop_timeout_s: float) -> None:
        self.bridge.close_trio_side()
        if not self._stopped.is_set():
            # RuntimeError: the loop already closed on its own.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            # Joined in real time: a virtual clock (autojump_clock) must not end the wait early.
            await trio.to_thread.run_sync(self._thread.join, stop_timeout_s)
        if self._thread.is_alive():
            log.error("%s thread did not stop within %.1f s; leaving it", self.name, stop_timeout_s)
            return
        if self._thread.ident is not None:
            # The thread posted `_trio_stopped` before it ended: it runs at the next checkpoint.
            await self._stopped.wait()


@asynccontextmanager
async def open_island(
    *,
    name: str = "asgard-rpc",
    max_in_flight: int = 1024,
    window: int = 64,
    stop_timeout_s: float = 5.0,
) -> AsyncIterator[Island]:
    """Start the island thread; stop it and join it when the block ends (or is cancelled)."""
    island = Island(name=name, max_in_flight=max_in_flight, window=window)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(island.bridge.run_trio_side)
            try:
                await island._wait_started()
                yield island
            finally:
                with trio.CancelScope(shield=True):
                    await island._close(stop_timeout_s)
    except BaseExceptionGroup as group:
        # The nursery is an implementation detail: an error of the caller's block (or of the
        # start) comes out as itself, not wrapped in a group.
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
        raise error from error.__cause__
