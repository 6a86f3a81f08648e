"""What the device client hands to its user: received messages, events, errors, the de-dup memory."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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
