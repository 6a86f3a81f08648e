"""The etcd gateway's HTTP/1.1 client: strict response framing, and the client on real sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from node.errors import NotFound, Unavailable
from node.locks import _http
from node.locks._http import GatewayClient
from node.locks._http1 import Body, Head, HttpError, parse_head, split_head

# -- the head ----------------------------------------------------------------------------------

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: x\r\nContent-Length: 12"


@pytest.mark.parametrize(
    ("block", "head"),
    [
        (OK_HEAD, Head(200, 12, False, True)),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding:  Chunked \r\nTrailer: X", Head(200, None, True, True)),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 3, 3\r\nContent-Length: 3", Head(404, 3, False, True)),
        (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0",
            Head(200, 0, False, False),
        ),
        (b"HTTP/1.1 200", Head(200, None, False, False)),  # until close
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2", Head(200, 2, False, False)),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 9", Head(204, 0, False, True)),
        (b"HTTP/1.1 200 OK\r\nX-Content-Length: 5\r\nContent-Length: 7", Head(200, 7, False, True)),
    ],
)
def test_valid_heads(block: bytes, head: Head) -> None:
    assert parse_head(block) == head


@pytest.mark.parametrize(
    "block",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n folded",  # obsolete line folding
        b"HTTP/1.1 200 OK\r\nContent-Length : 12",  # whitespace before the colon
        b"HTTP/1.1 200 OK\nContent-Length: 12",  # bare LF
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 1",  # bare CR
        b"HTTP/1.1 200 OK\r\nX: a\x00\r\nContent-Length: 1",
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",  # smuggling sign
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789",
        b"HTTP/1.1 200 OK\r\nContent-Length:",
        b"HTTP/2 200 OK\r\nContent-Length: 1",
        b"HTTP/1.1 20 OK\r\nContent-Length: 1",
        b"http/1.1 200 OK\r\nContent-Length: 1",
        b"HTTP/1.1 200 OK\r\n: empty name",
        b"",
    ],
)
def test_invalid_heads_raise_http_error(block: bytes) -> None:
    with pytest.raises(HttpError):
        parse_head(block)


def test_split_head_waits_for_the_blank_line_and_limits_the_size() -> None:
    buffer = bytearray(OK_HEAD + b"\r\n")
    assert split_head(buffer) is None
    buffer += b"\r\n{}"
    assert split_head(buffer) == OK_HEAD
    assert buffer == b"{}"
    with pytest.raises(HttpError):
        split_head(bytearray(b"HTTP/1.1 200 OK\r\nX: " + b"a" * (65 << 10)))


# -- bodies ------------------------------------------------------------------------------------

CHUNKED = b"5;name=value\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nGrpc-Trailer: a\r\n\r\n"


def _read(head: Head, wire: bytes, step: int, eof: bool = False) -> tuple[bytes, bool, bytearray]:
    """Feed `wire` `step` bytes at a time; (data, done, what was left after the body)."""
    body, buffer, out = Body(head), bytearray(), b""
    for i in range(0, len(wire), step):
        buffer += wire[i : i + step]
        out += body.take(buffer, False)
    if eof:
        out += body.take(buffer, True)
    return out, body.done, buffer


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_chunked_body_whole_and_piecewise(step: int) -> None:
    data, done, rest = _read(Head(200, None, True, True), CHUNKED + b"NEXT", step)
    assert (data, done, bytes(rest)) == (b"hello" + b"x" * 26, True, b"NEXT")


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_length_and_close_delimited_bodies(step: int) -> None:
    assert _read(Head(200, 5, False, True), b"abcdefg", step) == (b"abcde", True, bytearray(b"fg"))
    assert _read(Head(200, None, False, False), b"abcdefg", step, eof=True)[:2] == (b"abcdefg", True)
    assert _read(Head(200, None, False, False), b"abc", step)[1] is False  # open until the close


@pytest.mark.parametrize(
    "wire",
    [
        b"1_0\r\n",  # int(x, 16) would take it
        b" 10\r\n",
        b"0x10\r\n",
        b"-1\r\n",
        b"\r\n",
        b"1000000000000000\r\n",  # 16 hex digits: over the limit
        b"5\r\nhelloXX",  # data not followed by CRLF
        b"0\r\n folded: trailer\r\n\r\n",
        b"0\r\nno colon\r\n\r\n",
        b"1" * 2000,  # a size line that never ends
    ],
)
def test_bad_chunked_framing_raises(wire: bytes) -> None:
    with pytest.raises(HttpError):
        _read(Head(200, None, True, True), wire, 1000)


def test_a_body_cut_short_by_the_close_raises() -> None:
    with pytest.raises(HttpError):
        _read(Head(200, 10, False, True), b"abc", 1000, eof=True)
    with pytest.raises(HttpError):
        _read(Head(200, None, True, True), b"5\r\nhel", 1000, eof=True)


# -- the client on real sockets ----------------------------------------------------------------

Reply = Callable[[bytes, int], bytes | None]
"""(request body, request number on the connection) -> answer bytes (None: close without one)."""


def ok(doc: Mapping[str, object], extra: bytes = b"") -> bytes:
    body = json.dumps(doc).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        extra,
        len(body),
        body,
    )


def chunked(doc: Mapping[str, object], cuts: int = 3) -> bytes:
    body = json.dumps(doc).encode()
    size = max(1, len(body) // cuts)
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire + b"0\r\nT: 1\r\n\r\n"


class Gateway:
    """A hand-written HTTP/1.1 server on 127.0.0.1: answers each POST with `reply`."""

    def __init__(self, reply: Reply, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after  # close the connection after each answer
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffer, number = bytearray(), 0
        async with stream:
            while True:
                while (end := buffer.find(b"\r\n\r\n")) < 0:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head = bytes(buffer[:end])
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(buffer) < end + 4 + length:
                    buffer += await stream.receive_some(65536)
                body = bytes(buffer[end + 4 : end + 4 + length])
                del buffer[: end + 4 + length]
                self.requests.append((head, body))
                answer = self.reply(body, number)
                number += 1
                if answer is None:
                    return
                await stream.send_all(answer)
                if self.close_after:
                    return


@asynccontextmanager
async def gateway(
    reply: Reply, close_after: bool = False, request_timeout_s: float = 2.0
) -> AsyncIterator[tuple[Gateway, GatewayClient]]:
    server = Gateway(reply, close_after)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = GatewayClient(
            [f"http://127.0.0.1:{port}"],
            connect_timeout_s=2.0,
            request_timeout_s=request_timeout_s,
        )
        try:
            yield server, client
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_requests_reuse_one_keep_alive_connection() -> None:
    with trio.fail_after(5):
        async with gateway(lambda body, n: ok({"echo": json.loads(body), "n": n})) as (server, client):
            for i in range(3):
                assert await client.post("/v3/kv/range", {"i": i}) == {"echo": {"i": i}, "n": i}
    assert server.connections == 1
    head, body = server.requests[0]
    assert head.startswith(b"POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert body == b'{"i":0}'


async def test_chunked_answers_are_read_whole() -> None:
    doc = {"kvs": [{"key": "a" * 300}], "header": {"revision": "7"}}
    with trio.fail_after(5):
        async with gateway(lambda body, n: chunked(doc, cuts=5)) as (server, client):
            assert await client.post("/v3/kv/range", {}) == doc
            assert await client.post("/v3/kv/range", {}) == doc
    assert server.connections == 1


@pytest.mark.parametrize(
    ("answer", "close_after"),
    [
        (ok({"a": 1}, b"Connection: close\r\n"), False),
        (ok({"a": 1}) + b"junk after the answer", False),
        (b'HTTP/1.1 200 OK\r\n\r\n{"a": 1}', True),  # delimited by the close
        (b'HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}', False),
    ],
)
async def test_a_connection_is_not_reused_unless_the_answer_allows_it(
    answer: bytes, close_after: bool
) -> None:
    with trio.fail_after(5):
        async with gateway(lambda body, n: answer, close_after) as (server, client):
            assert await client.post("/p", {}) == {"a": 1}
            assert await client.post("/p", {}) == {"a": 1}
    assert server.connections == 2


async def test_gateway_errors_map_to_node_errors() -> None:
    def reply(body: bytes, n: int) -> bytes:
        doc = b'{"error":"lease not found","code":5}'
        return b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            len(doc),
            doc,
        )

    with trio.fail_after(5):
        async with gateway(reply) as (server, client):
            with pytest.raises(NotFound, match="lease not found"):
                await client.post("/v3/lease/revoke", {"ID": 1})
            with pytest.raises(NotFound):  # the connection stayed usable
                await client.post("/v3/lease/revoke", {"ID": 1})
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}",  # closed mid-body
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n{}",  # malformed head
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Len",  # closed in the head
        b"",  # closed without an answer
    ],
)
async def test_broken_answers_are_unavailable_then_a_new_connection_works(answer: bytes) -> None:
    with trio.fail_after(5):
        async with gateway(lambda body, n: answer or None, close_after=True) as (server, client):
            with pytest.raises(Unavailable):
                await client.post("/p", {})
            server.reply = lambda body, n: ok({"fine": True})
            assert await client.post("/p", {}) == {"fine": True}
    assert server.connections == 2


@pytest.mark.parametrize("answer", [b"nope!", b"[]"])
async def test_answers_that_are_no_json_object_are_unavailable(answer: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer)
    replies = iter([head + answer, ok({"fine": True})])
    with trio.fail_after(5):
        async with gateway(lambda body, n: next(replies)) as (server, client):
            with pytest.raises(Unavailable, match=r"not a JSON object|not JSON"):
                await client.post("/p", {})
            assert await client.post("/p", {}) == {"fine": True}
    assert server.connections == 1  # the HTTP exchange itself was sound: the connection is kept


async def test_an_idle_connection_the_gateway_closed_is_not_used() -> None:
    closed = trio.Event()

    class Closing(Gateway):
        async def handle(self, stream: trio.SocketStream) -> None:
            await super().handle(stream)
            closed.set()

    server = Closing(lambda body, n: ok({"n": n}), close_after=True)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            client = GatewayClient([f"http://127.0.0.1:{port}"], connect_timeout_s=1, request_timeout_s=1)
            assert await client.post("/p", {}) == {"n": 0}
            await closed.wait()  # the server closed its end of the pooled connection
            assert await client.post("/p", {}) == {"n": 0}  # on a new connection, no failure
            assert (client.failures, server.connections) == (0, 2)
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_a_connection_with_a_framing_error_is_dropped() -> None:
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}"
    replies = iter([bad, ok({"n": 1})])
    with trio.fail_after(5):
        async with gateway(lambda body, n: next(replies)) as (server, client):
            with pytest.raises(Unavailable, match="unsupported framing"):
                await client.post("/p", {})
            assert client.failures == 1
            assert await client.post("/p", {}) == {"n": 1}
    assert server.connections == 2


async def test_an_answer_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "MAX_BODY_BYTES", 100)
    with trio.fail_after(5):
        async with gateway(lambda body, n: chunked({"k": "v" * 200}, cuts=4)) as (_, client):
            with pytest.raises(Unavailable, match="too large"):
                await client.post("/p", {})
            assert client.failures == 1


async def test_no_answer_is_unavailable_at_the_request_deadline() -> None:
    never = trio.Event()
    accepted = 0

    async def silent(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        async with stream:
            await never.wait()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            client = GatewayClient([f"http://127.0.0.1:{port}"], connect_timeout_s=1.0, request_timeout_s=0.2)
            start = trio.current_time()
            with pytest.raises(Unavailable, match="no answer"):
                await client.post("/p", {})
            assert 0.2 <= trio.current_time() - start < 2
            assert client.failures == 1
            nursery.cancel_scope.cancel()
    assert accepted == 1


async def test_unreachable_endpoint_is_unavailable() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        client = GatewayClient([f"http://127.0.0.1:{port}"], connect_timeout_s=1.0, request_timeout_s=1.0)
        with trio.fail_after(5), pytest.raises(Unavailable, match="unreachable"):
            await client.post("/p", {})


async def test_stream_yields_json_lines_across_chunks_and_ends_unavailable() -> None:
    lines = b'{"result":{"n":1}}\n{"result":{"n":2}}\n\n{"result":{"n":3}}\n'
    cut = b"%x\r\n%s\r\n" % (10, lines[:10]) + b"%x\r\n%s\r\n" % (len(lines) - 10, lines[10:])
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with trio.fail_after(5):
        async with gateway(lambda body, n: head + cut + b"0\r\n\r\n") as (server, client):
            async with client.stream("/v3/watch", {"create_request": {}}) as stream:
                got = [(await stream.__anext__())["result"]["n"] for _ in range(3)]
                assert got == [1, 2, 3]
                with pytest.raises(Unavailable, match="stream ended"):
                    await stream.__anext__()
            server.reply = lambda body, n: ok({"error": "bad", "code": 5}).replace(b"200 OK", b"404 No")
            with pytest.raises(NotFound):
                async with client.stream("/v3/watch", {}):
                    pass
