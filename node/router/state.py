"""Which queued (DURABLE) rows a session has been given: the per-session delivery cursor. Pure.

Theory of operation
-------------------
Every DURABLE frame is committed to the offline queue (one row per receiver, numbered `seq` in
commit order; seqs are never reused) before it is pushed to an online receiver. A row leaves the
queue only when the receiver answers DELIVERED. Two paths push rows into a session's outbox:

* the **live push**: right after the commit that stored the row, the sender's task offers the
  frame to the receiver's outbox;
* the **drain**: the session's writer reads rows with `seq > cursor` from the store, in order, and
  offers them (with REDELIVERED set) while the outbox has room.

State: `cursor` (highest seq the drain has handled), `behind` (rows may exist that neither path
pushed), `pushed` (seqs handed to this session and not yet deleted from the store), `inflight`
((source, message id) -> seq, for the DELIVERED lookup).

Rules:
1. A session starts `behind` with cursor 0, so the drain sends what waited while it was away.
2. A live push is skipped when `seq <= cursor` (the drain saw that row), when the session is
   `behind` (the drain will send it, in order), when it was pushed already, or when `max_inflight`
   rows are unacknowledged or the outbox is full (then the session becomes `behind`).
3. The drain skips rows in `pushed`, advances `cursor` over every row it handled, and clears
   `behind` only when its read reached the end of the queue.

Why this is enough: one writer thread commits in seq order, so any read of the store sees every
committed row up to some seq. A drain read that ends the backlog runs (read, push, clear `behind`)
without yielding; a row committed before that read is pushed by it, a row committed after it is
pushed live (the session is no longer behind). Live pushes of different senders may run out of seq
order (Trio does not promise the wake-up order of tasks whose writes shared a commit); `pushed`
rather than `cursor` remembers them, so none is skipped and none is sent twice in one session.
Per sender, order holds: a sender's reader handles its next batch only after pushing the last.

Invariant: `len(pushed) <= max_inflight` except transiently by one drain batch; a seq leaves
`pushed` only after its row's delete has committed (so a drain cannot read a delivered row again).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

_MESSAGE_ID = struct.Struct("!Q")


def frame_key(frame: bytes) -> tuple[bytes, int]:
    """(source, message id) of a stored frame, the key DELIVERED names."""
    return frame[12:28], _MESSAGE_ID.unpack_from(frame, 4)[0]


class DeliveryState:
    """The delivery cursor of one session (see the module docstring)."""

    __slots__ = ("behind", "cursor", "inflight", "max_inflight", "pushed")

    def __init__(self, max_inflight: int) -> None:
        self.cursor = 0
        self.behind = True
        self.pushed: set[int] = set()
        self.inflight: dict[tuple[bytes, int], int] = {}
        self.max_inflight = max_inflight

    @property
    def room(self) -> int:
        """How many more rows may be pushed before DELIVERED answers come back."""
        return max(0, self.max_inflight - len(self.pushed))

    def may_push_live(self, seq: int) -> bool:
        """Rule 2; a refusal for lack of room makes the session `behind`."""
        if seq <= self.cursor or self.behind or seq in self.pushed:
            return False
        if len(self.pushed) >= self.max_inflight:
            self.behind = True
            return False
        return True

    def pushed_live(self, seq: int, key: tuple[bytes, int]) -> None:
        """Record a live push that went into the outbox."""
        self.pushed.add(seq)
        self.inflight[key] = seq

    def fell_behind(self) -> None:
        """A row could not be pushed (outbox full): the drain must find it."""
        self.behind = True

    def wants_drain(self) -> bool:
        """True when the drain has work and room to do it."""
        return self.behind and len(self.pushed) < self.max_inflight

    def skip_in_drain(self, seq: int) -> bool:
        """True when the drain must not push this row (it went out live); advances the cursor."""
        if seq in self.pushed:
            self.cursor = max(self.cursor, seq)
            return True
        return False

    def pushed_by_drain(self, seq: int, key: tuple[bytes, int]) -> None:
        """Record a row the drain put into the outbox."""
        self.pushed.add(seq)
        self.inflight[key] = seq
        self.cursor = max(self.cursor, seq)

    def drain_done(self, *, reached_end: bool) -> None:
        """Rule 3: the backlog is gone only when the read found no further rows."""
        if reached_end:
            self.behind = False

    def delivered(self, key: tuple[bytes, int]) -> int | None:
        """The receiver answered DELIVERED for `key`: return the row's seq (None if not pushed here)."""
        return self.inflight.pop(key, None)

    def forget(self, seq: int, key: tuple[bytes, int]) -> None:
        """A row left the queue without DELIVERED (expired, dropped, purged): stop counting it."""
        if self.inflight.get(key) == seq:
            del self.inflight[key]
        self.pushed.discard(seq)

    def deleted(self, seqs: Iterable[int]) -> None:
        """The rows' deletes have committed: they no longer count against `max_inflight`."""
        self.pushed.difference_update(seqs)

    @property
    def outstanding(self) -> int:
        """Rows pushed and not yet confirmed."""
        return len(self.inflight)
