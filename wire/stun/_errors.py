"""The STUN flavour of `DecodeError`: it carries what the server needs to answer."""

from __future__ import annotations

from wire._errors import DecodeError


class StunDecodeError(DecodeError):
    """Untrusted STUN bytes were rejected.

    `hint` is 400 or 420 when the peer should get an error response (then `method`, `cls` and
    `transaction_id` say which request to answer), None when the message must be dropped.
    `unknown_attributes` lists the comprehension-required types behind a 420.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: int | None = None,
        method: int | None = None,
        cls: int | None = None,
        transaction_id: bytes | None = None,
        unknown_attributes: tuple[int, ...] = (),
    ) -> None:
        super().__init__(message, hint=hint)
        self.method = method
        self.cls = cls
        self.transaction_id = transaction_id
        self.unknown_attributes = unknown_attributes
