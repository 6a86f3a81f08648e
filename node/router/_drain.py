"""The queue drain: push a session's queued rows after its cursor, in order, while there is room."""

from __future__ import annotations

from collections.abc import Callable

from node.router._session import Session
from node.router.state import frame_key

RowReader = Callable[[int, int, int], tuple[list[tuple[int, bytes]], bool]]
"""(after_seq, max_rows, max_bytes) -> (rows [(seq, frame)], more rows exist)."""


def drain(session: Session, read: RowReader, resend: Callable[[bytes], bytes]) -> int:
    """Offer queued rows to the session's outbox (rule 3 of node.router.state); return how many.

    `resend(frame)` makes the copy that goes out (REDELIVERED set). A row bigger than the outbox's
    byte limit still goes out, alone, when the outbox is empty.
    """
    delivery, outbox = session.delivery, session.outbox
    pushed = 0
    while delivery.wants_drain():
        messages, room_bytes = outbox.room()
        rows_room = min(messages, delivery.room)
        if rows_room <= 0 or (room_bytes <= 0 and outbox.frames):
            return pushed
        rows, more = read(delivery.cursor, rows_room, max(1, room_bytes))
        progressed = False
        for seq, frame in rows:
            if delivery.skip_in_drain(seq):
                progressed = True
                continue
            again = resend(frame)
            if not outbox.offer(again) and (outbox.frames or not outbox.put_control(again)):
                more = True
                break
            delivery.pushed_by_drain(seq, frame_key(frame))
            pushed += 1
            progressed = True
        if not more:
            delivery.drain_done(reached_end=True)
            return pushed
        if not progressed:
            return pushed
    return pushed
