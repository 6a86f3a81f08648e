"""RFC 6455 §4 opening handshake: parsing, limits, answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import DecodeError, EncodeError
from wire.ws import (
    accept_key,
    decode_handshake_untrusted,
    encode_handshake_accept,
    encode_handshake_reject,
)

# RFC 6455 §1.2/§1.3 example key and answer.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def request(*lines: str, first: str = "GET /v1/ws?token=x HTTP/1.1") -> bytes:
    base = [
        first,
        "Host: server.example.com",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        f"Sec-WebSocket-Key: {RFC_KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    return ("\r\n".join([*base, *lines]) + "\r\n\r\n").encode("latin-1")


def test_rfc_accept_key() -> None:
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_parse_full_request_fields() -> None:
    raw = request(
        "Origin: http://example.com",
        "Sec-WebSocket-Protocol: chat, superchat",
        "Authorization: Bearer asg_secret",
        "X-Thing:   padded \t",
    )
    parsed = decode_handshake_untrusted(raw + b"\x81\x85")
    assert parsed is not None
    req, consumed = parsed
    assert consumed == len(raw)
    assert req.path == "/v1/ws"
    assert req.query == "token=x"
    assert req.target == "/v1/ws?token=x"
    assert req.host == "server.example.com"
    assert req.origin == "http://example.com"
    assert req.subprotocols == ("chat", "superchat")
    assert req.bearer_token == "asg_secret"
    assert req.header("x-thing") == "padded"
    assert req.header("X-THING") == "padded"
    assert req.header("missing") is None


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer  ", None),
    ],
)
def test_bearer_token_forms(value: str, token: str | None) -> None:
    parsed = decode_handshake_untrusted(request(f"Authorization: {value}"))
    assert parsed is not None
    assert parsed[0].bearer_token == token


def test_incomplete_returns_none_byte_by_byte() -> None:
    raw = request()
    for i in range(len(raw)):
        assert decode_handshake_untrusted(raw[:i]) is None
    assert decode_handshake_untrusted(raw) is not None


def test_accept_response_bytes() -> None:
    parsed = decode_handshake_untrusted(request("Sec-WebSocket-Protocol: chat"))
    assert parsed is not None
    answer = encode_handshake_accept(parsed[0], subprotocol="chat")
    assert answer == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    )
    with pytest.raises(EncodeError):
        encode_handshake_accept(parsed[0], subprotocol="other")
    with pytest.raises(EncodeError):
        encode_handshake_accept(parsed[0], extra_headers=(("X-Bad", "a\r\nb"),))


def test_reject_response_bytes() -> None:
    assert encode_handshake_reject(403, body=b"no") == (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\nno"
    )
    assert b"Sec-WebSocket-Version: 13\r\n" in encode_handshake_reject(426)
    with pytest.raises(EncodeError):
        encode_handshake_reject(200)
    with pytest.raises(EncodeError):
        encode_handshake_reject(999)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request(first="POST /v1/ws HTTP/1.1"), 405),
        (request(first="GET /v1/ws HTTP/1.0"), 505),
        (request(first="GET http://x/v1/ws HTTP/1.1"), 400),
        (request(first="GET /v1/ws"), 400),
        (request(first="GET /a b HTTP/1.1"), 400),
        (request(" folded"), 400),
        (request("Bad Name: x"), 400),
        (request("X: a\x01b"), 400),
        (request("Host: twice"), 400),
        (request("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="), 400),
        (request().replace(b"Upgrade: websocket", b"Upgrade: h2c"), 426),
        (request().replace(b"keep-alive, Upgrade", b"keep-alive"), 400),
        (request().replace(b"Version: 13", b"Version: 8"), 426),
        (request().replace(RFC_KEY.encode(), b"c2hvcnQ="), 400),
        (request().replace(RFC_KEY.encode(), b"not base64!!"), 400),
        (request().replace(b"Host: server.example.com\r\n", b""), 400),
        (request(*(f"X-{i}: y" for i in range(70))), 431),
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 9000, 431),
    ],
)
def test_refusals_carry_http_status(raw: bytes, status: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_handshake_untrusted(raw)
    assert info.value.hint == status


def test_custom_size_limit() -> None:
    raw = request()
    with pytest.raises(DecodeError) as info:
        decode_handshake_untrusted(raw[:-4], max_bytes=len(raw) - 10)
    assert info.value.hint == 431


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_decode_error(raw: bytes) -> None:
    for data in (raw, request()[:40] + raw + b"\r\n\r\n"):
        try:
            decode_handshake_untrusted(data)
        except DecodeError as exc:
            hint = exc.hint
            assert hint in (400, 405, 426, 431, 505)
