"""What the device client hands to its user: received messages, events, errors, the de-dup memory."""

from __future__ import annotations

import heapq
import math
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio

from wire.device import NACK_SLUGS, Flags, FrameView, NackReason

T = TypeVar("T")


@dataclass
class Pending(Generic[T]):
    """The answer to one request of the client: set once (a result or an error), awaited once."""

    done: trio.Event = field(default_factory=trio.Event)
    result: T | BaseException | None = None

    def settle(self, result: T | BaseException) -> bool:
        """Hand over the answer; False when it was already settled."""
        if self.done.is_set():
            return False
        self.result = result
        self.done.set()
        return True

    def outcome(self) -> T:
        """The answer once `done` is set (an error is raised)."""
        if isinstance(self.result, BaseException):
            raise self.result
        assert self.result is not None
        return self.result


@dataclass(frozen=True, slots=True)
class Message:
    """A data frame received from another device (DIRECT, BROADCAST, MULTICAST or ANYCAST)."""

    type: int
    flags: int
    message_id: int
    source: uuid.UUID
    destination: bytes
    payload: bytes
    raw: bytes

    @classmethod
    def of(cls, frame: FrameView) -> Message:
        return cls(
            frame.type,
            frame.flags,
            frame.message_id,
            frame.source_uuid,
            frame.destination,
            bytes(frame.payload),
            frame.raw,
        )

    @property
    def durable(self) -> bool:
        return bool(self.flags & Flags.DURABLE)

    @property
    def redelivered(self) -> bool:
        """Sent from the node's offline queue; it may be a duplicate (the client drops those)."""
        return bool(self.flags & Flags.REDELIVERED)


@dataclass(frozen=True, slots=True)
class Ack:
    """The node's ACK for a sent message: status (AckStatus) and the number of recipients."""

    message_id: int
    status: int
    recipients: int


_MIN_REBUILD = 1024


class Deadlines:
    """Answer slots that must be settled by a deadline: one timer for all of them.

    A CancelScope with a deadline per request costs ~17 µs here (it registers in trio's deadline
    heap on entry and leaves it on exit), two per lock acquire + release. The timer sleeps until
    the earliest deadline and only moves earlier (most requests carry later deadlines than the
    ones before them); at a deadline a slot still open is settled with trio.TooSlowError, which
    its waiter raises. Slots that were answered are dropped lazily: the heap is rebuilt from the
    open ones when it holds more than twice as many (plus a margin), so it stays bounded.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Pending[Any]]] = []
        self._seq = 0
        self._timer: trio.CancelScope | None = None
        self._limit = _MIN_REBUILD

    def add(self, deadline: float, slot: Pending[Any]) -> None:
        """Settle `slot` with TooSlowError at `deadline` unless it is settled before."""
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, slot))
        if len(self._heap) > self._limit:  # amortized O(1): the heap has doubled since the last
            self._heap = [entry for entry in self._heap if not entry[2].done.is_set()]
            heapq.heapify(self._heap)
            self._limit = max(_MIN_REBUILD, 2 * len(self._heap))
        if self._timer is not None and deadline < self._timer.deadline:
            self._timer.deadline = deadline

    def __len__(self) -> int:
        return len(self._heap)

    def clear(self) -> None:
        self._heap.clear()
        self._timer = None

    async def run(self) -> None:
        """The timer task (runs for as long as the caller's nursery)."""
        while True:
            with trio.CancelScope(deadline=self._heap[0][0] if self._heap else math.inf) as self._timer:
                await trio.sleep_forever()
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                heapq.heappop(self._heap)[2].settle(trio.TooSlowError())


class ClientError(Exception):
    """Base of the device client's errors."""


class NackError(ClientError):
    """The node refused a message: `reason` is a NackReason number, `slug` its name."""

    def __init__(self, message_id: int, reason: int, detail: str) -> None:
        slug = (
            NACK_SLUGS.get(NackReason(reason), "internal")
            if reason in NackReason._value2member_map_
            else "internal"
        )
        super().__init__(f"message {message_id} refused: {slug}{': ' + detail if detail else ''}")
        self.message_id = message_id
        self.reason = reason
        self.slug = slug
        self.detail = detail


class ConnectionLost(ClientError):
    """The connection closed before the answer came; the message may or may not have been routed."""


class SessionEnded(ClientError):
    """The node ended the session for good (replaced 4000, auth failed 4001, revoked 4003, ...)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"session ended by the node: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class SeenIds:
    """The last `capacity` (source, message id) pairs received, for dropping duplicates."""

    def __init__(self, capacity: int) -> None:
        self._seen: OrderedDict[tuple[bytes, int], None] = OrderedDict()
        self._capacity = capacity

    def add(self, key: tuple[bytes, int]) -> bool:
        """Remember `key`; False when it was already there (a duplicate)."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)
