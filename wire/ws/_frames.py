"""RFC 6455 §5 framing, server side: a decoder for client frames and header-only encoders.

The decoder parses every complete frame in each chunk it is fed and returns whole messages, so a
reader that receives 64 KiB at once gets all the messages in it from one call. Partial frames are
kept (a header's worth, or up to one frame when it is cut) until the rest arrives; nothing is
buffered when the stream is idle. The encoder returns only the frame header for data messages so
the writer can hand (header, payload, header, payload, ...) to one `sendmsg` without copying.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wire._errors import DecodeError, EncodeError
from wire.ws._mask import BytesLike, Unmasker, unmask_python

# RFC 6455 §5.2 opcodes.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# RFC 6455 §7.4.1 status codes used by this side.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005  # never sent on the wire: reported when a close frame has no body
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

MAX_CONTROL_PAYLOAD_BYTES = 125  # RFC 6455 §5.5
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HDR16 = struct.Struct("!BBH")
_HDR64 = struct.Struct("!BBQ")
_SMALL_BINARY_HEADERS = tuple(bytes((0x80 | OP_BINARY, n)) for n in range(126))


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping frame from the peer; answer with a pong carrying the same payload (§5.5.2)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong frame from the peer (§5.5.3)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """A close frame from the peer (§5.5.1); `code` is 1005 when the frame had no body."""

    code: int
    reason: str


# A binary message is `bytes`, a text message is `str`; control frames are the classes above.
WsEvent = bytes | str | Ping | Pong | Close


def valid_close_code(code: int) -> bool:
    """Tell whether `code` may appear in a close frame (RFC 6455 §7.4, IANA registry)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def _protocol_error(message: str) -> DecodeError:
    return DecodeError(message, hint=CLOSE_PROTOCOL_ERROR)


class FrameDecoder:
    """Incremental decoder of masked client frames into whole messages (RFC 6455 §5).

    Raises `DecodeError` with `hint` = the close code to send: 1002 protocol error, 1007 invalid
    UTF-8, 1009 message larger than `max_message_bytes`. After a close frame it ignores the rest.
    """

    __slots__ = (
        "_closed",
        "_frag_opcode",
        "_frag_parts",
        "_frag_size",
        "_max_message",
        "_need",
        "_pending",
        "_unmask",
        "all_binary",
    )

    def __init__(self, *, max_message_bytes: int, unmask: Unmasker | None = None) -> None:
        self._max_message = max_message_bytes
        self._unmask: Unmasker = unmask or unmask_python
        self._pending: bytearray | None = None  # an incomplete frame carried over
        self._need = 0  # bytes `_pending` must hold before parsing is worth trying again
        self._frag_opcode = 0  # opcode of the fragmented message in progress, 0 for none
        self._frag_parts: list[bytes] = []
        self._frag_size = 0
        self._closed = False
        self.all_binary = True  # every event of the last `feed` was a binary message (bytes)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for incomplete frames and fragmented messages."""
        pending = len(self._pending) if self._pending is not None else 0
        return pending + self._frag_size

    def feed(self, data: BytesLike) -> list[WsEvent]:
        """Consume a chunk of the byte stream and return every message it completes.

        Afterwards `all_binary` tells whether every returned event is a binary message (`bytes`),
        so a reader can skip looking for control frames in the usual case.
        """
        self.all_binary = True
        if self._closed:
            return []
        if self._pending is None:
            view = memoryview(data)
        else:
            self._pending += data
            if len(self._pending) < self._need:
                return []
            view = memoryview(self._pending)
            self._pending = None
        events: list[WsEvent] = []
        end = view.nbytes
        pos = 0
        unmask = self._unmask
        while end - pos >= 2 and not self._closed:
            b0 = view[pos]
            b1 = view[pos + 1]
            # Inlined hot path (no call per frame): a masked, unfragmented binary message with a
            # 7- or 16-bit length, which is what device frames up to 64 KiB are.
            if b0 == 0x82 and 0x80 <= b1 <= 0xFE and not self._frag_opcode:
                if b1 == 0xFE:
                    if end - pos < 8:
                        self._need = 8
                        break
                    start = pos + 8
                    length = _U16.unpack_from(view, pos + 2)[0]
                else:
                    start = pos + 6
                    length = b1 - 0x80
                if length > self._max_message:
                    raise DecodeError("message too big", hint=CLOSE_MESSAGE_TOO_BIG)
                stop = start + length
                if stop > end:
                    self._need = stop - pos
                    break
                events.append(unmask(view[start:stop], bytes(view[start - 4 : start])))
                pos = stop
                continue
            next_pos = self._parse_one(view, pos, events)
            if next_pos < 0:
                break
            pos = next_pos
        else:
            self._need = 0
        if pos < end and not self._closed:
            self._pending = bytearray(view[pos:])
        return events

    def _parse_one(self, view: memoryview, pos: int, events: list[WsEvent]) -> int:
        """Parse the frame at `pos`; return where the next one starts, or -1 when it is cut."""
        end = view.nbytes
        b0 = view[pos]
        b1 = view[pos + 1]
        if not b1 & 0x80:
            raise _protocol_error("client frame is not masked (RFC 6455 §5.1)")
        length = b1 & 0x7F
        start = pos + 6
        if length == 126:
            if end - pos < 8:
                self._need = 8
                return -1
            length = _U16.unpack_from(view, pos + 2)[0]
            start = pos + 8
        elif length == 127:
            if end - pos < 14:
                self._need = 14
                return -1
            length = _U64.unpack_from(view, pos + 2)[0]
            start = pos + 14
        self._check_header(b0, length)
        if end - start < length:
            self._need = start - pos + length
            return -1
        payload = self._unmask(view[start : start + length], bytes(view[start - 4 : start]))
        self._on_frame(b0, payload, events)
        return start + length

    def _check_header(self, b0: int, length: int) -> None:
        if b0 & 0x70:
            raise _protocol_error("reserved bits set without a negotiated extension (§5.2)")
        opcode = b0 & 0x0F
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise _protocol_error(f"unknown control opcode {opcode:#x}")
            if not b0 & 0x80 or length > MAX_CONTROL_PAYLOAD_BYTES:
                raise _protocol_error("control frames must be final and at most 125 bytes (§5.5)")
        elif opcode > OP_BINARY:
            raise _protocol_error(f"unknown data opcode {opcode:#x}")
        elif length >> 63:
            raise _protocol_error("64-bit length with the most significant bit set (§5.2)")
        elif self._frag_size + length > self._max_message:
            raise DecodeError("message too big", hint=CLOSE_MESSAGE_TOO_BIG)

    def _on_frame(self, b0: int, payload: bytes, events: list[WsEvent]) -> None:
        opcode = b0 & 0x0F
        if b0 == 0x80 | OP_BINARY and not self._frag_opcode:
            events.append(payload)  # one unfragmented binary message
            return
        self.all_binary = False  # conservative: a reassembled binary message also clears it
        if opcode >= OP_CLOSE:
            events.append(self._control(opcode, payload))
        elif opcode == OP_CONTINUATION:
            if not self._frag_opcode:
                raise _protocol_error("continuation frame without a message to continue (§5.4)")
            self._add_fragment(payload, final=bool(b0 & 0x80), events=events)
        elif self._frag_opcode:
            raise _protocol_error("new data message inside a fragmented one (§5.4)")
        elif b0 & 0x80:
            events.append(_text(payload))
        else:
            self._frag_opcode = opcode
            self._add_fragment(payload, final=False, events=events)

    def _add_fragment(self, payload: bytes, *, final: bool, events: list[WsEvent]) -> None:
        self._frag_parts.append(payload)
        self._frag_size += len(payload)
        if not final:
            return
        message = b"".join(self._frag_parts)
        opcode = self._frag_opcode
        self._frag_parts = []
        self._frag_size = 0
        self._frag_opcode = 0
        events.append(_text(message) if opcode == OP_TEXT else message)

    def _control(self, opcode: int, payload: bytes) -> Ping | Pong | Close:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        self._closed = True
        self._pending = None
        return decode_close_payload_untrusted(payload)


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("text message is not valid UTF-8", hint=CLOSE_INVALID_DATA) from None


def decode_close_payload_untrusted(payload: bytes) -> Close:
    """Parse the body of a close frame (RFC 6455 §5.5.1, §7.4)."""
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) < 2:
        raise _protocol_error("close frame body of one byte")
    code = _U16.unpack_from(payload)[0]
    if not valid_close_code(code):
        raise _protocol_error(f"close code {code} may not be sent")
    return Close(code, _text(payload[2:]))


def encode_frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """Return the unmasked header of a server frame carrying `length` payload bytes (§5.2)."""
    b0 = (0x80 if fin else 0) | opcode
    if length < 126:
        if b0 == 0x80 | OP_BINARY:
            return _SMALL_BINARY_HEADERS[length]
        return bytes((b0, length))
    if length < 0x10000:
        return _HDR16.pack(b0, 126, length)
    if length >> 63:
        raise EncodeError("frame too long")
    return _HDR64.pack(b0, 127, length)


def encode_binary_header(length: int) -> bytes:
    """Return the header of one unfragmented binary message of `length` bytes."""
    if length < 126:
        return _SMALL_BINARY_HEADERS[length]
    return encode_frame_header(OP_BINARY, length)


def encode_control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """Return a whole ping, pong or close frame (≤ 125 payload bytes, §5.5)."""
    if len(payload) > MAX_CONTROL_PAYLOAD_BYTES:
        raise EncodeError("control frame payload over 125 bytes")
    return bytes((0x80 | opcode, len(payload))) + payload


def encode_close(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    """Return a whole close frame; the reason is cut at a UTF-8 boundary to fit 123 bytes."""
    if code == CLOSE_NO_STATUS:
        return encode_control_frame(OP_CLOSE)
    if not valid_close_code(code):
        raise EncodeError(f"close code {code} may not be sent")
    raw = reason.encode("utf-8")[: MAX_CONTROL_PAYLOAD_BYTES - 2]
    raw = raw.decode("utf-8", "ignore").encode("utf-8")
    return encode_control_frame(OP_CLOSE, _U16.pack(code) + raw)
