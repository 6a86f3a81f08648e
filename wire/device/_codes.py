"""Numbers of the device protocol: frame types, flags, NACK reasons, ACK statuses, derived ids.

docs/protocol.md is the reference for device authors; every number here appears there.
"""

from __future__ import annotations

import hashlib
import uuid
from enum import IntEnum, IntFlag

from wire._errors import EncodeError

PROTOCOL_VERSION = 1
ZERO_ID = bytes(16)  # destination of control frames, source of frames the node originates


class FrameType(IntEnum):
    """The `type` byte of a frame."""

    HELLO = 0x01
    WELCOME = 0x02
    REGISTER = 0x03
    REGISTERED = 0x04
    HEARTBEAT = 0x05
    ACK = 0x06
    NACK = 0x07
    JOIN = 0x08
    LEAVE = 0x09
    SUBSCRIBE = 0x0A
    UNSUBSCRIBE = 0x0B
    EVENT = 0x0C
    DELIVERED = 0x0D
    DIRECT = 0x10
    BROADCAST = 0x11
    MULTICAST = 0x12
    ANYCAST = 0x13


DATA_TYPES = frozenset({0x10, 0x11, 0x12, 0x13})
CONTROL_TYPES = frozenset(range(0x01, 0x0E))
LOCK_TYPES = frozenset(range(0x20, 0x30))  # reserved for the lock service's operations
KNOWN_TYPES = DATA_TYPES | CONTROL_TYPES | LOCK_TYPES


class Flags(IntFlag):
    """The `flags` field (u16). Bits not listed must be zero."""

    ACK_REQUESTED = 0x0001
    DURABLE = 0x0002
    REDELIVERED = 0x0004
    ANYCAST_POLICY_MASK = 0x0300


ANYCAST_POLICY_SHIFT = 8
DEFINED_FLAG_BITS = 0x0307


class AnycastPolicy(IntEnum):
    """Bits 8-9 of `flags` on an ANYCAST frame."""

    SERVER_DEFAULT = 0
    ROUND_ROBIN = 1
    LEAST_OUTSTANDING = 2


class AckStatus(IntEnum):
    """First byte of an ACK payload."""

    DELIVERED = 1  # handed to the destination session(s) on this node
    QUEUED = 2  # committed to the offline queue
    FORWARDED = 3  # handed to a peer node's link


class NackReason(IntEnum):
    """Reason code (u16) at the start of a NACK payload. Stable: never renumbered."""

    UNKNOWN_DEVICE = 1
    NOT_PERMITTED = 2
    TOO_LARGE = 3
    QUEUE_FULL = 4
    RATE_LIMITED = 5
    BAD_FRAME = 6
    NOT_REGISTERED = 7
    UNAUTHENTICATED = 8
    INVALID_INPUT = 9
    UNAVAILABLE = 10
    DEADLOCK = 11
    CONFLICT = 12
    NO_RECIPIENT = 13
    EXPIRED = 14
    UNSUPPORTED_VERSION = 15
    NOT_FOUND = 16
    DROPPED = 17
    STORE_ERROR = 18
    INTERNAL = 19
    RESOURCE_EXHAUSTED = 20
    ABORTED = 21


# The slug of each reason; where `node.errors` has the same meaning its `code` is used verbatim.
NACK_SLUGS: dict[NackReason, str] = {
    NackReason.UNKNOWN_DEVICE: "unknown-device",
    NackReason.NOT_PERMITTED: "permission-denied",
    NackReason.TOO_LARGE: "too-large",
    NackReason.QUEUE_FULL: "queue-full",
    NackReason.RATE_LIMITED: "rate-limited",
    NackReason.BAD_FRAME: "bad-frame",
    NackReason.NOT_REGISTERED: "not-registered",
    NackReason.UNAUTHENTICATED: "unauthenticated",
    NackReason.INVALID_INPUT: "invalid-input",
    NackReason.UNAVAILABLE: "unavailable",
    NackReason.DEADLOCK: "deadlock",
    NackReason.CONFLICT: "conflict",
    NackReason.NO_RECIPIENT: "no-recipient",
    NackReason.EXPIRED: "expired",
    NackReason.UNSUPPORTED_VERSION: "unsupported-version",
    NackReason.NOT_FOUND: "not-found",
    NackReason.DROPPED: "dropped",
    NackReason.STORE_ERROR: "store-error",
    NackReason.INTERNAL: "internal",
    NackReason.RESOURCE_EXHAUSTED: "resource-exhausted",
    NackReason.ABORTED: "aborted",
}

_BY_SLUG = {slug: reason for reason, slug in NACK_SLUGS.items()}


def nack_reason_for_code(code: str) -> NackReason:
    """Map a `node.errors` code (or a NACK slug) to its reason; unknown ones are INTERNAL."""
    return _BY_SLUG.get(code, NackReason.INTERNAL)


_GROUP_PREFIX = b"asgard/group\0"
_CAPABILITY_PREFIX = b"asgard/capability\0"
MAX_NAME_BYTES = 255


def _name_bytes(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not raw or len(raw) > MAX_NAME_BYTES:
        raise EncodeError(f"names are 1-{MAX_NAME_BYTES} UTF-8 bytes")
    return raw


def group_id(network_id: uuid.UUID, name: str) -> bytes:
    """Destination of a MULTICAST: SHA-256(b"asgard/group\\0" + network id + name)[:16]."""
    return hashlib.sha256(_GROUP_PREFIX + network_id.bytes + _name_bytes(name)).digest()[:16]


def capability_id(name: str) -> bytes:
    """Destination of an ANYCAST: SHA-256(b"asgard/capability\\0" + name)[:16]."""
    return hashlib.sha256(_CAPABILITY_PREFIX + _name_bytes(name)).digest()[:16]
