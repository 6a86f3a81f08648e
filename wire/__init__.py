"""Sans-IO codecs and protocol state machines. Standard library only; no sockets, clocks or logs."""

from wire._errors import DecodeError, EncodeError, WireError

__all__ = ["DecodeError", "EncodeError", "WireError"]
