"""What this node knows about the cluster's leader: pure rules, no I/O.

Theory of operation
-------------------
Two modes. **standalone** (no etcd configured): this node is its own leader, forever, with no term.
**etcd**: every node campaigns with a key on its own etcd lease; the oldest live key leads and its
create revision is the leader's *term* (the fencing token of leader-only duties).

In etcd mode the node's knowledge is a *view* that is valid only while its own lease is: a node
whose lease may have lapsed (no keepalive answered within the TTL) cannot know who leads, because
etcd may already have deleted keys, its own included. So a view is recorded with the lease's
`valid_until` (Trio clock, conservative: send time of the last answered keepalive + TTL), every
read takes `now`, and past `valid_until` the answer is "no leader known". Hence the safety rule:
`is_leader` is true only while

    won (our key was the oldest when we last read the queue)  and  now < valid_until

and a deposed or partitioned leader stops claiming at `valid_until` at the latest, which is never
later than etcd's own expiry of its lease — before anyone else can lead.

Keepalives extend a view that is still valid (`renewed`); the queue is re-read on every change and
at least every TTL/3, so a view that lapsed while the lease survived is established again (as a new
tenure: the claim had a gap).

Transitions (the service calls them; each records a change in the bounded history when the
(leader, term) pair changes):

    unknown --observed(other)--> following --observed(self key)/won--> leading
    any --lost/expired--> unknown          (lease gone or lapsed, etcd unreachable)

Our own leadership intervals ("tenures": term, start, end in wall time) are kept separately, so
anyone can check that no two nodes claimed overlapping terms. A tenure that ends because the lease
ran out is closed at the wall time of `valid_until`, the moment the claim stopped, not when the
service noticed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["etcd", "standalone"]
HISTORY_MAX = 64


@dataclass(frozen=True, slots=True)
class LeaderChange:
    """One change of the known leader (None: no leader known)."""

    leader: str | None
    term: int | None
    at: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"leader": self.leader, "term": self.term, "at": self.at, "reason": self.reason}


@dataclass(slots=True)
class Tenure:
    """One interval during which this node claimed leadership, in wall time."""

    term: int
    started_at: float
    ended_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"term": self.term, "started_at": self.started_at, "ended_at": self.ended_at}


class ElectionState:
    """The leader as this node sees it, with the history of changes and its own tenures."""

    def __init__(self, node_id: str, mode: Mode, wall: float, history_max: int = HISTORY_MAX) -> None:
        self.node_id = node_id
        self.mode: Mode = mode
        self.history: deque[LeaderChange] = deque(maxlen=history_max)
        self.tenures: deque[Tenure] = deque(maxlen=history_max)
        self._leader: str | None = None
        self._term: int | None = None
        self._won = False
        self._valid_until = float("-inf")
        self.since = wall
        self.reason = "starting"
        if mode == "standalone":
            self._set(node_id, None, wall, "standalone: no etcd configured, this node is its own leader")

    # ------------------------------------------------------------ transitions

    def observed(
        self, leader: str, term: int, own: bool, valid_until: float, now: float, wall: float
    ) -> None:
        """The oldest campaign key is `leader`'s with create revision `term` (`own`: it is ours)."""
        self._etcd_only()
        self.expire(now, wall)
        self._valid_until = valid_until
        if not now < valid_until:
            return  # a view read through a lease that has already lapsed says nothing
        if own and not self._won:
            self._won = True
            self.tenures.append(Tenure(term, wall))
        elif not own and self._won:
            self._end_tenure(wall)
        self._set(leader, term, wall, "we lead" if own else "observed in etcd")

    def renewed(self, valid_until: float, now: float, wall: float) -> None:
        """Our lease was renewed: a view that is still valid stays valid until `valid_until`.

        A view that has already lapsed stays lapsed (we may have said "no leader known" in
        between); the next read of the queue (`observed`) establishes it again.
        """
        self.expire(now, wall)
        if self.mode == "etcd" and now < self._valid_until < valid_until:
            self._valid_until = valid_until

    def lost(self, now: float, wall: float, reason: str) -> None:
        """Our view is gone: lease lapsed or revoked, etcd unreachable, watch broken."""
        self._etcd_only()
        self.expire(now, wall)
        self._valid_until = float("-inf")
        if self._won:
            self._end_tenure(wall)
        self._set(None, None, wall, f"no leader known: {reason}")

    def expire(self, now: float, wall: float) -> None:
        """Close a view whose lease validity has passed (at the wall time it passed)."""
        if self.mode == "standalone" or now < self._valid_until or self._leader is None:
            return
        lapsed_at = wall - (now - self._valid_until)
        if self._won:
            self._end_tenure(lapsed_at)
        self._set(None, None, lapsed_at, "no leader known: our etcd lease may have lapsed")

    # ------------------------------------------------------------ reads

    def view(self) -> tuple[str | None, int | None]:
        """(leader, term) as last established (call `expire` first for the current answer)."""
        return self._leader, self._term

    def is_leader(self, now: float) -> bool:
        if self.mode == "standalone":
            return True
        return self._won and now < self._valid_until

    def term(self, now: float) -> int | None:
        """Our fencing token while we lead, else None."""
        return self._term if self.is_leader(now) else None

    def status(self, now: float, wall: float) -> dict[str, Any]:
        """The view as the API shows it (lazily expired first)."""
        self.expire(now, wall)
        return {
            "mode": self.mode,
            "node_id": self.node_id,
            "leader": self._leader,
            "term": self._term,
            "is_leader": self.is_leader(now),
            "since": self.since,
            "detail": self.reason,
            "changes": len(self.history),
            "history": [change.as_dict() for change in self.history],
            "tenures": [tenure.as_dict() for tenure in self.tenures],
        }

    # ------------------------------------------------------------ helpers

    def _set(self, leader: str | None, term: int | None, wall: float, reason: str) -> None:
        self.reason = reason
        if (leader, term) == (self._leader, self._term) and self.history:
            return
        self._leader, self._term = leader, term
        self.since = wall
        self.history.append(LeaderChange(leader, term, wall, reason))

    def _end_tenure(self, wall: float) -> None:
        self._won = False
        if self.tenures and self.tenures[-1].ended_at is None:
            self.tenures[-1].ended_at = wall

    def _etcd_only(self) -> None:
        if self.mode != "etcd":
            raise ValueError("standalone election has no etcd view")
