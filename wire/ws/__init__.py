"""Sans-IO server side of RFC 6455 WebSocket: opening handshake, frame decoder, header encoders.

Choices, measured on this machine (see bench/ws_engine/README.md for the whole story):
- The handshake is parsed here (stdlib only) instead of with h11/wsproto: `wire/` takes no third
  party imports, and parsing a 275-byte upgrade request plus building the 101 answer takes about
  58 µs here against 170-220 µs for wsproto's `WSConnection` (h11 underneath).
- The decoder parses every frame of a received chunk in one call and returns whole messages, so the
  I/O layer does one `recv_into` and one decode per batch instead of a task hop per message.
- Unmasking is injectable: the node passes `websockets.speedups.apply_mask` (C) when installed;
  the pure-Python fallback is in `_mask`.
"""

from wire.ws._frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED_DATA,
    MAX_CONTROL_PAYLOAD_BYTES,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    FrameDecoder,
    Ping,
    Pong,
    WsEvent,
    decode_close_payload_untrusted,
    encode_binary_header,
    encode_close,
    encode_control_frame,
    encode_frame_header,
    valid_close_code,
)
from wire.ws._handshake import (
    MAX_HANDSHAKE_BYTES,
    WS_GUID,
    HandshakeRequest,
    accept_key,
    decode_handshake_untrusted,
    encode_handshake_accept,
    encode_handshake_reject,
)
from wire.ws._mask import BytesLike, Unmasker, unmask_python

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_DATA",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_NO_STATUS",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_UNSUPPORTED_DATA",
    "MAX_CONTROL_PAYLOAD_BYTES",
    "MAX_HANDSHAKE_BYTES",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "WS_GUID",
    "BytesLike",
    "Close",
    "FrameDecoder",
    "HandshakeRequest",
    "Ping",
    "Pong",
    "Unmasker",
    "WsEvent",
    "accept_key",
    "decode_close_payload_untrusted",
    "decode_handshake_untrusted",
    "encode_binary_header",
    "encode_close",
    "encode_control_frame",
    "encode_frame_header",
    "encode_handshake_accept",
    "encode_handshake_reject",
    "unmask_python",
    "valid_close_code",
]
