"""HTTP/1.1 response framing for the etcd gateway client, sans-IO (RFC 9112).

Only what a client that sends one POST at a time needs: the status line and head (checked in one
regular-expression pass; only Content-Length, Transfer-Encoding and Connection are read), then the
body delimited by Content-Length, by chunked coding (RFC 9112 §7.1, extensions ignored, trailers
read and dropped) or by the connection closing (§6.3 rule 8; such a connection is not reused).
Strict: anything else is `HttpError` — obsolete line folding, whitespace before a colon, bare CR
or LF, an interim (1xx) answer, a transfer coding other than chunked, Transfer-Encoding together
with Content-Length (§6.3 rule 3: a smuggling sign), differing Content-Length values, malformed
chunk sizes. Every piece has a size limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 << 10
MAX_CHUNK_LINE_BYTES = 1 << 10
MAX_TRAILER_BYTES = 16 << 10
_CRLF = b"\r\n"

# The whole head at once (status line, then `name: value` lines; no bare CR/LF/NUL, a name is a
# token, RFC 9110 §5.1/§5.5) in one C-level pass instead of a Python loop per line.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEAD = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n\x00]*)?((?:\r\n" + _TOKEN + rb":[^\r\n\x00]*)*)")
_FRAMING = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n|$)", re.I
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n\x00]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")


class HttpError(Exception):
    """The answer breaks HTTP/1.1 framing, or a limit."""


@dataclass(frozen=True, slots=True)
class Head:
    """What the client needs from a response head."""

    status: int
    length: int | None  # Content-Length; None with `chunked` or when the body ends at close
    chunked: bool
    keep_alive: bool


def parse_head(block: bytes | bytearray) -> Head:
    """A response head without its final CRLFCRLF -> Head (HttpError when it is not valid)."""
    match = _HEAD.fullmatch(block)
    if match is None:
        raise HttpError("malformed response head")
    minor, status = match.group(1), int(match.group(2))
    if status < 200:
        raise HttpError(f"interim response {status} (nothing was asked that allows one)")
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    keep_alive = minor == b"1"
    for name, value in _FRAMING.findall(match.group(3)):
        lower = name.lower()
        if lower == b"content-length":
            lengths.update(part.strip() for part in value.split(b","))
        elif lower == b"transfer-encoding":
            codings += [part.strip().lower() for part in value.split(b",")]
        elif b"close" in [part.strip().lower() for part in value.split(b",")]:
            keep_alive = False
    if status in (204, 304):
        return Head(status, 0, False, keep_alive)
    if codings:
        if codings != [b"chunked"] or lengths or minor != b"1":
            raise HttpError(f"unsupported framing: Transfer-Encoding {codings!r}, Content-Length {lengths!r}")
        return Head(status, None, True, keep_alive)
    if lengths:
        (length,) = lengths if len(lengths) == 1 else (b"",)
        if not _DIGITS.fullmatch(length):
            raise HttpError(f"bad Content-Length {sorted(lengths)!r}")
        return Head(status, int(length), False, keep_alive)
    return Head(status, None, False, False)  # delimited by close: never reused


def split_head(buffer: bytearray) -> bytes | None:
    """Remove and return a complete head from `buffer` (None: not all here yet)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise HttpError("response head too large")
        return None
    if end > MAX_HEAD_BYTES:
        raise HttpError("response head too large")
    block = bytes(buffer[:end])
    del buffer[: end + 4]
    return block


_LENGTH, _SIZE, _DATA, _DATA_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(7)


class Body:
    """Body data out of a receive buffer, by the framing of `head`; `done` once it is complete."""

    __slots__ = ("_left", "_state", "_trailer_bytes")

    def __init__(self, head: Head) -> None:
        self._trailer_bytes = 0
        if head.chunked:
            self._state, self._left = _SIZE, 0
        elif head.length is not None:
            self._state, self._left = (_LENGTH, head.length) if head.length else (_DONE, 0)
        else:
            self._state, self._left = _UNTIL_CLOSE, 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def take(self, buffer: bytearray, eof: bool) -> bytes:
        """Consume what `buffer` holds of the body; the data (b"" and not `done`: need more).

        `eof`: the peer closed and `buffer` holds all it will ever send.
        """
        out: list[bytes] = []
        while self._state != _DONE and self._step(buffer, out):
            pass
        if eof and self._state == _UNTIL_CLOSE:
            self._state = _DONE
        elif eof and self._state != _DONE:
            raise HttpError("the connection closed in the middle of the body")
        return out[0] if len(out) == 1 else b"".join(out)

    def _step(self, buffer: bytearray, out: list[bytes]) -> bool:
        """One framing step; False when `buffer` does not hold enough for the next one."""
        state = self._state
        if state in (_LENGTH, _DATA):
            if not buffer:
                return False
            n = min(len(buffer), self._left)
            out.append(bytes(buffer[:n]))
            del buffer[:n]
            self._left -= n
            if not self._left:
                self._state = _DONE if state == _LENGTH else _DATA_END
        elif state == _SIZE:
            line = _line(buffer, MAX_CHUNK_LINE_BYTES)
            if line is None:
                return False
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise HttpError(f"bad chunk size line {line[:40]!r}")
            self._left = int(match.group(1), 16)
            self._state = _DATA if self._left else _TRAILERS
        elif state == _DATA_END:
            if len(buffer) < 2:
                return False
            if buffer[:2] != _CRLF:
                raise HttpError("chunk data not followed by CRLF")
            del buffer[:2]
            self._state = _SIZE
        elif state == _TRAILERS:
            return self._trailer(buffer)
        else:  # _UNTIL_CLOSE
            if not buffer:
                return False
            out.append(bytes(buffer))
            buffer.clear()
        return True

    def _trailer(self, buffer: bytearray) -> bool:
        line = _line(buffer, MAX_TRAILER_BYTES)
        if line is None:
            return False
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise HttpError("trailer section too large")
        if not line:
            self._state = _DONE
        elif b":" not in line or line[:1] in (b" ", b"\t") or b"\r" in line or b"\n" in line:
            raise HttpError("malformed trailer field")
        return True


def _line(buffer: bytearray, limit: int) -> bytes | None:
    """Remove and return one CRLF-terminated line (None: not all here yet)."""
    end = buffer.find(_CRLF, 0, limit + 2)
    if end < 0:
        if len(buffer) > limit:
            raise HttpError("line too long")
        return None
    line = bytes(buffer[:end])
    del buffer[: end + 2]
    return line
