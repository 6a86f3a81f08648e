"""ACK and NACK frames the node sends, built with one `struct.pack` (docs/protocol.md §4)."""

from __future__ import annotations

import struct

from wire.device import (
    HEADER,
    MAX_NACK_DETAIL_BYTES,
    PROTOCOL_VERSION,
    ZERO_ID,
    AckStatus,
    FrameType,
    NackReason,
)

_ACK_PAYLOAD = struct.Struct("!BBH")
_NACK_REASON = struct.Struct("!H")
_ACK_ONE: dict[int, bytes] = {status: _ACK_PAYLOAD.pack(status, 0, 1) for status in AckStatus}

# What a NACK says when the caller gives no detail of its own.
DEFAULT_DETAILS: dict[int, str] = {
    NackReason.UNKNOWN_DEVICE: "no such device",
    NackReason.NOT_PERMITTED: "this token may not reach that destination",
    NackReason.TOO_LARGE: "payload over the limit",
    NackReason.QUEUE_FULL: "the destination's offline queue is full",
    NackReason.RATE_LIMITED: "too many messages",
    NackReason.BAD_FRAME: "malformed frame",
    NackReason.NOT_REGISTERED: "REGISTER before sending data",
    NackReason.UNAUTHENTICATED: "send HELLO with a token first",
    NackReason.INVALID_INPUT: "invalid input",
    NackReason.UNAVAILABLE: "cannot take it now; retry later",
    NackReason.NO_RECIPIENT: "nobody online to receive it",
    NackReason.EXPIRED: "the queued message expired before delivery",
    NackReason.DROPPED: "dropped from the destination's full offline queue (drop-oldest)",
    NackReason.STORE_ERROR: "the store failed; the message was not stored",
    NackReason.INTERNAL: "internal error",
    NackReason.RESOURCE_EXHAUSTED: "the destination is not reading fast enough; message dropped",
}


def ack_frame(message_id: int, destination: bytes, status: int, recipients: int = 1) -> bytes:
    """An ACK for `message_id`, addressed to `destination` (the sender)."""
    payload = _ACK_ONE[status] if recipients == 1 else _ACK_PAYLOAD.pack(status, 0, min(recipients, 0xFFFF))
    return HEADER.pack(PROTOCOL_VERSION, FrameType.ACK, 0, message_id, ZERO_ID, destination, 4) + payload


def nack_frame(message_id: int, destination: bytes, reason: int, detail: str = "") -> bytes:
    """A NACK for `message_id`; the detail defaults to the reason's usual text, cut to 1024 bytes."""
    text = (detail or DEFAULT_DETAILS.get(reason, "")).encode("utf-8")[:MAX_NACK_DETAIL_BYTES]
    text = text.decode("utf-8", "ignore").encode("utf-8")
    header = HEADER.pack(PROTOCOL_VERSION, FrameType.NACK, 0, message_id, ZERO_ID, destination, 2 + len(text))
    return header + _NACK_REASON.pack(reason) + text
