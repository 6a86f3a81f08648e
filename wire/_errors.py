"""The error tree of the sans-IO layer: one type for everything untrusted input can cause."""

from __future__ import annotations


class WireError(Exception):
    """Base of every error raised by `wire`."""


class DecodeError(WireError):
    """Untrusted bytes could not be decoded.

    `hint` tells the I/O layer how to answer: a STUN error code (400, 420), a WebSocket
    close code (1002, 1009), or None when the right answer is silence (drop and count).
    """

    def __init__(self, message: str, *, hint: int | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class EncodeError(WireError):
    """A locally built message cannot be encoded (a bug or a value out of range)."""
