"""RFC 6455 §4.2 opening handshake, server side: parse the upgrade request, build the answer.

The caller accumulates bytes until `decode_handshake_untrusted` returns a request (it returns None
while the header block is incomplete), decides whether to accept it (path, Origin, token,
subprotocol), and writes either `encode_handshake_accept` or `encode_handshake_reject`. A
`DecodeError` from the parser carries the HTTP status to answer with in `hint`.

Written here rather than with h11/wsproto because `wire/` is standard library only; it also costs
less (see the package docstring for figures).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from http import HTTPStatus

from wire._errors import DecodeError, EncodeError

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
WS_VERSION = "13"
MAX_HANDSHAKE_BYTES = 8192
MAX_HEADER_COUNT = 64
# RFC 9110 §5.1/§5.5: a token name, optional whitespace, a value without control characters.
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_ORIGIN_FORM = re.compile(rb"/[\x21-\x7e]*")
_LIST_HEADERS = frozenset({"connection", "upgrade", "sec-websocket-protocol"})
_SINGLE_HEADERS = frozenset({"host", "sec-websocket-key", "sec-websocket-version", "origin", "authorization"})


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """A validated WebSocket upgrade request; header names are lower case."""

    target: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    key: str
    subprotocols: tuple[str, ...]

    def header(self, name: str) -> str | None:
        """Return the value of header `name` (case-insensitive), or None; repeats are joined."""
        wanted = name.lower()
        values = [v for k, v in self.headers if k == wanted]
        return ", ".join(values) if values else None

    @property
    def host(self) -> str:
        """The Host header (RFC 6455 §4.2.1 item 2 requires it)."""
        return self.header("host") or ""

    @property
    def origin(self) -> str | None:
        """The Origin header that browsers send (§4.2.1 item 7), or None."""
        return self.header("origin")

    @property
    def bearer_token(self) -> str | None:
        """The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), or None."""
        value = self.header("authorization")
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None


def _fail(message: str, status: int = 400) -> DecodeError:
    return DecodeError(message, hint=status)


def decode_handshake_untrusted(
    buf: bytes | bytearray, *, max_bytes: int = MAX_HANDSHAKE_BYTES
) -> tuple[HandshakeRequest, int] | None:
    """Parse an upgrade request at the start of `buf`.

    Returns:
        (request, bytes consumed), or None while the header block is not complete.
    Raises:
        DecodeError: `hint` is the HTTP status to answer (400, 405, 426, 431, 505).
    """
    end = buf.find(b"\r\n\r\n", 0, max_bytes)
    if end < 0:
        if len(buf) >= max_bytes:
            raise _fail("request header block too large", 431)
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    target = _parse_request_line(lines[0])
    headers = _parse_header_lines(lines[1:])
    return _build_request(target, headers), end + 4


def _parse_request_line(line: bytes) -> str:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise _fail("malformed request line")
    method, target, version = parts
    if version != b"HTTP/1.1":
        raise _fail("the opening handshake needs HTTP/1.1 (RFC 6455 §4.1)", 505)
    if method != b"GET":
        raise _fail("the opening handshake is a GET request", 405)
    if _ORIGIN_FORM.fullmatch(target) is None:
        raise _fail("request target must be an origin-form path")
    return target.decode("ascii")


def _parse_header_lines(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    if len(lines) > MAX_HEADER_COUNT:
        raise _fail("too many header fields", 431)
    headers = []
    for line in lines:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise _fail("malformed header field (obsolete line folding is refused)")
        name, value = match.groups()
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return tuple(headers)


def _tokens(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [t.strip() for k, v in headers if k == name for t in v.split(",") if t.strip()]


def _build_request(target: str, headers: tuple[tuple[str, str], ...]) -> HandshakeRequest:
    names = [k for k, _ in headers]
    for name in _SINGLE_HEADERS:
        if names.count(name) > 1:
            raise _fail(f"repeated {name} header")
    single = {k: v for k, v in headers if k in _SINGLE_HEADERS}
    if not single.get("host"):
        raise _fail("missing Host header")
    if "websocket" not in (t.lower() for t in _tokens(headers, "upgrade")):
        raise _fail("not a WebSocket upgrade request", 426)
    if "upgrade" not in (t.lower() for t in _tokens(headers, "connection")):
        raise _fail("Connection header lacks the upgrade token")
    if single.get("sec-websocket-version") != WS_VERSION:
        raise _fail("unsupported Sec-WebSocket-Version (RFC 6455 §4.4)", 426)
    key = single.get("sec-websocket-key", "")
    try:
        raw_key = base64.b64decode(key, validate=True)
    except binascii.Error:
        raw_key = b""
    if len(raw_key) != 16:
        raise _fail("Sec-WebSocket-Key is not 16 base64-encoded bytes (§4.1)")
    path, _, query = target.partition("?")
    protocols = tuple(_tokens(headers, "sec-websocket-protocol"))
    return HandshakeRequest(target, path, query, headers, key, protocols)


def accept_key(key: str) -> str:
    """Return the Sec-WebSocket-Accept value for a client key (RFC 6455 §4.2.2 item 5.4)."""
    digest = hashlib.sha1(key.encode("ascii") + WS_GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _header_block(status_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [status_line]
    for name, value in headers:
        if any(c in name + value for c in "\r\n\0"):
            raise EncodeError("CR, LF or NUL in a response header")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_handshake_accept(
    request: HandshakeRequest,
    *,
    subprotocol: str | None = None,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Return the `101 Switching Protocols` response accepting `request` (RFC 6455 §4.2.2)."""
    if subprotocol is not None and subprotocol not in request.subprotocols:
        raise EncodeError("the subprotocol must be one the client offered")
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(request.key)),
    ]
    if subprotocol is not None:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    headers.extend(extra_headers)
    return _header_block("HTTP/1.1 101 Switching Protocols", headers)


def encode_handshake_reject(
    status: int,
    *,
    body: bytes = b"",
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Return a complete HTTP error response that refuses the upgrade and closes the connection."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        raise EncodeError(f"unknown HTTP status {status}") from None
    if not 400 <= status <= 599:
        raise EncodeError("a refusal needs a 4xx or 5xx status")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    if status == HTTPStatus.UPGRADE_REQUIRED:
        headers += [("Upgrade", "websocket"), ("Sec-WebSocket-Version", WS_VERSION)]
    headers.extend(extra_headers)
    return _header_block(f"HTTP/1.1 {status} {phrase}", headers) + body
