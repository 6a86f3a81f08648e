"""The device client's WebSocket connection: RFC 6455, client side, driven from the reading task.

History: trio-websocket ran a reader task of its own and handed every message over a memory
channel (two task switches per message); wsproto driven from the reading task removed those
(client CPU per lock round trip 787 -> 693 µs). wsproto itself still cost ~80 µs of CPU per
message here (event objects, a generic frame parser, its masker), on a path where one lock round
trip is four messages, so the codec is now this module's own: the upgrade request and its answer
(§4.1, §4.2.2), masked client frames (§5.3, masking key from `os.urandom`, the mask applied by
`websockets.speedups` when installed), unmasked server frames parsed from one bytearray, with a
fast path for the usual unfragmented binary message.

RFC 6455 rules kept: every client frame is masked; a masked server frame, reserved bits, unknown
opcodes, fragmented or oversized control frames, a continuation without a start, a 64-bit length
with its top bit set, a bad close code (§7.4) close with 1002 and invalid UTF-8 in a text message
or a close reason with 1007; pings are answered with their payload, a close from the node is
answered and reported with its code, a message over `max_message_bytes` closes with 1009 (checked
from the frame header, before its payload is buffered), the upgrade answer must carry the right
`Sec-WebSocket-Accept` and no extension or subprotocol that was not offered.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import os
import re
import struct

import trio

from wire.ws import Unmasker, accept_key, unmask_python, valid_close_code


def _masker() -> Unmasker:
    """The C masker of the `websockets` package when installed (XOR masking is its own inverse)."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:  # pragma: no cover - websockets is a dependency of the node
        return unmask_python
    return apply_mask


_apply_mask = _masker()

RECEIVE_BYTES = 1 << 16
MAX_UPGRADE_ANSWER_BYTES = 16 << 10
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005  # RFC 6455 §7.4.1: reported, never sent
CLOSE_ABNORMAL = 1006  # RFC 6455 §7.4.1: reported, never sent
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")
_STATUS = re.compile(rb"HTTP/1\.1 ([0-9]{3})(?: [^\r\n]*)?")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*?)[ \t]*")


class WsClosed(Exception):
    """The connection ended: the close code (1006 when it was lost without one) and reason."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}) {reason}".rstrip())
        self.code = code
        self.reason = reason


class WsRejected(Exception):
    """The node answered the upgrade request with an HTTP status instead of 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the upgrade was refused: HTTP {status}")
        self.status = status


class WsHandshakeError(Exception):
    """The opening handshake broke the protocol (or the session start did)."""


class _ProtocolError(Exception):
    """The node broke RFC 6455: close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def encode_client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked with a fresh key (§5.2, §5.3)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 0x10000:
        head = _HEAD16.pack(0x80 | opcode, 0xFE, size)
    else:
        head = _HEAD64.pack(0x80 | opcode, 0xFF, size)
    key = os.urandom(4)
    return head + key + _apply_mask(payload, key)


class ClientWebSocket:
    """One client connection over a connected Trio stream; one task receives, any task sends."""

    def __init__(self, stream: trio.abc.Stream, *, max_message_bytes: int) -> None:
        self._stream = stream
        # The socket under a SocketStream: the hot path reads and writes its fd directly (below).
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._buffer = bytearray()
        self._send_lock = trio.Lock()
        self._max = max_message_bytes
        self._parts: list[bytes] = []
        self._part_size = 0
        self._part_opcode = 0  # opcode of the fragmented message in progress, 0 for none
        self._open = False  # upgraded and no close frame sent or received
        self._close_sent = False
        self.closed: WsClosed | None = None

    # -- opening handshake (§4.1) ------------------------------------------------------------
    async def handshake(self, host: str, target: str, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the upgrade request and wait for the answer (the caller bounds it in time)."""
        key = base64.b64encode(os.urandom(16))
        lines = [
            b"GET %s HTTP/1.1" % target.encode(),
            b"Host: " + host.encode(),
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: " + key,
            b"Sec-WebSocket-Version: 13",
            *(name + b": " + value for name, value in headers),
        ]
        await self._write(b"\r\n".join(lines) + b"\r\n\r\n")
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_UPGRADE_ANSWER_BYTES:
                raise WsHandshakeError("the upgrade answer is too large")
            if not await self._fill():
                raise WsHandshakeError("the connection closed during the handshake")
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]  # what follows is already WebSocket frames
        _check_upgrade_answer(head, key)
        self._open = True

    # -- sending -----------------------------------------------------------------------------
    async def send(self, message: bytes, *, then_waits: bool = False) -> None:
        """Send one binary message; WsClosed once the connection is closing or closed.

        `then_waits`: the caller blocks for an answer right after (that is its checkpoint), so a
        frame the socket takes at once goes out without yielding to the scheduler.
        """
        if not self._open:
            raise self.closed or WsClosed(CLOSE_ABNORMAL, "not open")
        frame = encode_client_frame(_OP_BINARY, message)
        if then_waits and self._sock is not None and not self._send_lock.locked():
            # trio's send_all costs a context manager and a scheduler pass per call; one
            # non-blocking write(2) takes a small frame whole (measured: ~50 µs less per request).
            sent = self._write_nowait(frame)
            if sent == len(frame):
                return
            self._send_lock.acquire_nowait()  # free: nothing has yielded since the check
            try:
                await self._stream.send_all(frame[sent:])
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self.closed or WsClosed(CLOSE_ABNORMAL, str(exc)) from None
            finally:
                self._send_lock.release()
            return
        await self._write(frame)

    def _write_nowait(self, data: bytes) -> int:
        """Write what the socket takes now; how much that was."""
        assert self._sock is not None
        try:
            return os.write(self._sock.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError as exc:  # closed (fd -1), reset, broken pipe
            raise self.closed or WsClosed(CLOSE_ABNORMAL, str(exc)) from None

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the receiving task sees the node's answer as WsClosed.
        A connection that is already gone is simply closed (nothing is raised)."""
        if self._open:
            self._open = False
            with contextlib.suppress(WsClosed):
                await self._send_close(code, reason)

    async def _send_close(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        self._close_sent = True
        raw = reason.encode()[:123].decode("utf-8", "ignore").encode()  # cut at a character
        payload = b"" if code == CLOSE_NO_STATUS else _U16.pack(code) + raw
        await self._write(encode_client_frame(_OP_CLOSE, payload))

    async def _write(self, data: bytes) -> None:
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self.closed or WsClosed(CLOSE_ABNORMAL, str(exc)) from None

    # -- receiving ---------------------------------------------------------------------------
    async def receive(self) -> bytes | str:
        """The next whole message; WsClosed (with the node's code) when the connection ends."""
        if self.closed is not None:
            raise self.closed
        while True:
            try:
                message = await self._next_message()
            except _ProtocolError as exc:
                raise await self._fail(exc.code, exc.reason) from None
            if message is not None:
                return message
            if not await self._fill():
                self.closed = self.closed or WsClosed(CLOSE_ABNORMAL, "connection lost")
                self._open = False
                raise self.closed

    async def _fill(self) -> bool:
        """Receive more bytes into the buffer; False when the node closed the connection."""
        if self._sock is None:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        else:
            data = await self._read_socket()
        self._buffer += data
        return bool(data)

    async def _read_socket(self) -> bytes:
        """Wait until the socket is readable, then read it (receive_some would try a read that
        fails first, inside a context manager: ~15 µs more per message here)."""
        assert self._sock is not None
        while True:
            fd = self._sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the connection was closed")
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

    async def _fail(self, code: int, reason: str) -> WsClosed:
        """Close because the node broke the protocol (or a limit): tell it why; the error."""
        self.closed = closed = WsClosed(code, reason)
        self._open = False
        with contextlib.suppress(WsClosed):
            await self._send_close(code, reason)
        return closed

    async def _next_message(self) -> bytes | str | None:
        """Parse frames from the buffer until a message is whole (None: more bytes needed)."""
        buffer = self._buffer
        while len(buffer) >= 2:
            b0, b1 = buffer[0], buffer[1]
            # The usual frame, inlined: a final binary message of < 126 bytes, nothing pending.
            if b0 == 0x82 and b1 < 126 and b1 <= self._max and not self._part_opcode:
                if len(buffer) < 2 + b1:
                    return None
                payload = bytes(buffer[2 : 2 + b1])
                del buffer[: 2 + b1]
                return payload
            frame = self._frame(buffer, b0, b1)
            if frame is None:
                return None
            message = await self._on_frame(b0, frame)
            if message is not None:
                return message
        return None

    def _frame(self, buffer: bytearray, b0: int, b1: int) -> bytes | None:
        """Check the header (§5.2) and cut the frame's payload from `buffer` (None: not all here)."""
        if b1 & 0x80:
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "a masked frame from the server (§5.1)")
        if b0 & 0x70:
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set (§5.2)")
        length, start = b1 & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return None
            length, start = _U16.unpack_from(buffer, 2)[0], 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            length, start = _U64.unpack_from(buffer, 2)[0], 10
            if length >> 63:
                raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "64-bit length with its top bit set (§5.2)")
        self._check_frame(b0, length)
        if len(buffer) < start + length:
            return None
        payload = bytes(buffer[start : start + length])
        del buffer[: start + length]
        return payload

    def _check_frame(self, b0: int, length: int) -> None:
        opcode = b0 & 0x0F
        if opcode >= _OP_CLOSE:
            if opcode > _OP_PONG:
                raise _ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown control opcode {opcode:#x}")
            if not b0 & 0x80 or length > 125:
                raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "control frames are final, <= 125 bytes (§5.5)")
            return
        if opcode > _OP_BINARY:
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown data opcode {opcode:#x}")
        if opcode == _OP_CONT and not self._part_opcode:
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "a continuation without a message (§5.4)")
        if opcode != _OP_CONT and self._part_opcode:
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "a new message inside a fragmented one (§5.4)")
        if self._part_size + length > self._max:
            raise _ProtocolError(CLOSE_TOO_BIG, f"a message over {self._max} bytes")

    async def _on_frame(self, b0: int, payload: bytes) -> bytes | str | None:
        """A whole frame: the message it completes, if any; control frames are handled here."""
        opcode = b0 & 0x0F
        if opcode == _OP_PING:
            if self._open:
                await self._write(encode_client_frame(_OP_PONG, payload))
            return None
        if opcode == _OP_PONG:
            return None
        if opcode == _OP_CLOSE:
            await self._on_close(payload)
        if opcode != _OP_CONT:
            self._part_opcode = opcode
        self._parts.append(payload)
        self._part_size += len(payload)
        if not b0 & 0x80:
            return None
        parts, kind = self._parts, self._part_opcode
        self._parts, self._part_size, self._part_opcode = [], 0, 0
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data if kind == _OP_BINARY else _utf8(data)

    async def _on_close(self, payload: bytes) -> None:
        """The node's close frame (§5.5.1): answer it unless we started the close; report it."""
        if not payload:
            code, reason = CLOSE_NO_STATUS, ""
        elif len(payload) < 2 or not valid_close_code(code := _U16.unpack_from(payload)[0]):
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "a bad close frame (§7.4)")
        else:
            reason = _utf8(payload[2:])
        self._open = False
        self.closed = closed = WsClosed(code, reason)
        with contextlib.suppress(WsClosed):
            await self._send_close(code, reason)  # echo the code (§5.5.1)
        raise closed


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 (§8.1)") from None


def _check_upgrade_answer(head: bytes, key: bytes) -> None:
    """The node's answer to the upgrade request must accept it as RFC 6455 §4.1 says."""
    status_line, _, rest = head.partition(b"\r\n")
    status = _STATUS.fullmatch(status_line)
    if status is None:
        raise WsHandshakeError(f"not an HTTP/1.1 answer: {status_line[:60]!r}")
    if status.group(1) != b"101":
        raise WsRejected(int(status.group(1)))
    fields: dict[bytes, list[bytes]] = {}
    for line in rest.split(b"\r\n") if rest else ():
        field = _FIELD.fullmatch(line)
        if field is None:
            raise WsHandshakeError(f"a malformed header line: {line[:60]!r}")
        fields.setdefault(field.group(1).lower(), []).append(field.group(2))
    if [v.lower() for v in fields.get(b"upgrade", [])] != [b"websocket"]:
        raise WsHandshakeError("the answer does not upgrade to websocket")
    tokens = [t.strip().lower() for v in fields.get(b"connection", []) for t in v.split(b",")]
    if b"upgrade" not in tokens:
        raise WsHandshakeError("the answer's Connection header lacks 'upgrade'")
    accept = fields.get(b"sec-websocket-accept", [b""])
    if len(accept) != 1 or not hmac.compare_digest(accept[0], accept_key(key.decode()).encode()):
        raise WsHandshakeError("wrong Sec-WebSocket-Accept")
    if b"sec-websocket-extensions" in fields or b"sec-websocket-protocol" in fields:
        raise WsHandshakeError("an extension or subprotocol that was not offered")
