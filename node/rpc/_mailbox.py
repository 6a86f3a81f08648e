"""Batched hand-over of small jobs between the island thread (asyncio) and the Trio thread.

Theory of operation
-------------------
Two threads run event loops: Trio's (the node) and the island's (grpclib on uvloop). They share no
state; each side owns its objects and changes them only on its own thread. The only way across is
to *post* a job, a plain `(fn, args)` pair that the other thread runs as `fn(*args)`:

* island → Trio (`IslandOutbox`): jobs posted during one asyncio loop iteration are collected in a
  list; the first post schedules `flush` with `loop.call_soon`, which runs once, at the start of the
  next iteration, and hands the whole list to Trio with one `TrioToken.run_sync_soon`.
* Trio → island (`TrioOutbox`): jobs posted by Trio tasks are collected likewise; a Trio
  instrument hands the list over with one `loop.call_soon_threadsafe` at the end of each pass of
  Trio's scheduler (`before_io_wait`). Before it is installed, or after, a post goes over at once.

Each hand-over costs one cross-thread wake-up (a write to the other loop's wake-up fd, and a GIL
hand-off) whatever the batch size: under load, wake-ups are per batch and not per message, which
the spike measured as the difference between ~15k msg/s with lag spikes and ~20k msg/s without
(spike-stack.md §2.3). The lists are swapped, never shared, so no lock is needed: a list belongs to
the posting thread until it is handed over, then to the running thread.

Jobs must not raise. A job that does is a bug; it is logged and the batch continues, because an
exception escaping a `run_sync_soon` callback would crash the whole Trio run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("asgard.rpc")

Job = tuple[Callable[..., object], tuple[Any, ...]]


def run_jobs(batch: list[Job]) -> None:
    """Run a handed-over batch in order on the current thread."""
    for fn, args in batch:
        try:
            fn(*args)
        except Exception:
            log.exception("bridge job %r failed", fn)


class IslandOutbox:
    """Jobs from the island thread to Trio; used on the island thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken) -> None:
        self._loop = loop
        self._token = token
        self._pending: list[Job] = []
        self.batches = 0
        self.jobs = 0

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the Trio thread soon (after this loop iteration)."""
        self._pending.append((fn, args))
        if len(self._pending) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self.batches += 1
        self.jobs += len(batch)
        try:
            self._token.run_sync_soon(run_jobs, batch)
        except trio.RunFinishedError:
            # Trio has ended: nobody is left to answer. Only happens during teardown.
            log.debug("dropping %d job(s) for a finished Trio run", len(batch))


class TrioOutbox(trio.abc.Instrument):
    """Jobs from Trio to the island thread; used on the Trio thread only.

    A Trio instrument: `before_io_wait` runs once per pass of Trio's scheduler, right before it
    polls for I/O, so everything Trio tasks posted during that pass goes over in one hand-over,
    with no task or wake-up of its own. Before `start` and after `stop`, posts go over at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Job] = []
        self._installed = False
        self.batches = 0
        self.jobs = 0

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the island loop soon (at the end of this Trio scheduler pass)."""
        self._pending.append((fn, args))
        if not self._installed:
            self._flush()

    def start(self) -> None:
        """Begin batching (Trio thread, inside the run)."""
        trio.lowlevel.add_instrument(self)
        self._installed = True

    def stop(self) -> None:
        """Stop batching and hand over what is pending."""
        if self._installed:
            self._installed = False
            trio.lowlevel.remove_instrument(self)
        if self._pending:
            self._flush()

    def before_io_wait(self, timeout: float) -> None:
        if self._pending:
            self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self.batches += 1
        self.jobs += len(batch)
        try:
            self._loop.call_soon_threadsafe(run_jobs, batch)
        except RuntimeError:
            # The island loop is closed: nobody is left to answer. Only happens during teardown.
            log.debug("dropping %d job(s) for a closed island loop", len(batch))
