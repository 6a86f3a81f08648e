"""Start-up: rebuild the lock state from the journal (counters, and leases with their remaining time)."""

from __future__ import annotations

import trio

from node.clock import WallClock
from node.errors import InvalidInput
from node.locks._types import Lease, LockMode
from node.locks.journal import LeaseEnded, LockJournal
from node.locks.settings import LockSettings
from node.locks.state import LockState


async def load_state(
    settings: LockSettings, journal: LockJournal, wall: WallClock
) -> tuple[LockState, dict[str, int], list[LeaseEnded]]:
    """The state, the durable token reservations, and the leases to drop (expired or conflicting).

    Tokens continue above each resource's reservation, so none handed out before a crash repeats.
    A lease keeps its wall-clock deadline: it resumes with the time it had left, or is dropped.
    For a resource with conflicting leases (cannot happen with a correct journal) the newest wins.
    """
    snapshot = await journal.load()
    counters = dict(snapshot.counters)
    state = LockState(settings, counters)
    now, wall_now = trio.current_time(), wall.now()
    ended: list[LeaseEnded] = []
    for rec in sorted(snapshot.leases, key=lambda r: (r.resource, -r.token)):
        remaining = min(rec.expires_at_unix - wall_now, rec.lease_s)
        lease = Lease(
            rec.resource,
            rec.token,
            rec.owner,
            rec.session,
            LockMode(rec.mode),
            rec.priority,
            rec.lease_s,
            now,
            now + remaining,
        )
        try:
            if remaining <= 0:
                raise InvalidInput("expired")  # noqa: TRY301 - one path for both drops
            state.restore(lease)
        except InvalidInput:
            ended.append(LeaseEnded(rec.resource, rec.token))
    return state, dict(state.counters()), ended
