"""ACK and NACK frames the node sends (docs/protocol.md §4), with a default text for each reason."""

from __future__ import annotations

from wire.device import NackReason, encode_ack_frame, encode_nack_frame

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
    return encode_ack_frame(message_id, destination, status, min(recipients, 0xFFFF))  # type: ignore[arg-type]


def nack_frame(message_id: int, destination: bytes, reason: int, detail: str = "") -> bytes:
    """A NACK for `message_id`; the detail defaults to the reason's usual text (cut to 1024 bytes)."""
    return encode_nack_frame(message_id, destination, reason, detail or DEFAULT_DETAILS.get(reason, ""))
