"""Connection-level HTTP behaviour on raw sockets: keep-alive, unread request bodies, idle timeout."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import trio
import trio.testing

from tests.api.helpers import LiveNode

TIMEOUT_S = 10


class RawHttp:
    """A byte-level HTTP/1.1 client on one connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def connect(cls, url: str) -> RawHttp:
        parts = urlsplit(url)
        return cls(await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80))

    async def response(self) -> tuple[str, dict[str, str], bytes]:
        """(status line, headers with lowercase names, body) of the next response."""
        while b"\r\n\r\n" not in self.buf:
            await self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            await self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    async def closed_by_server(self) -> bool:
        """True when the server closes the connection (EOF) with nothing more to say."""
        data = await self.stream.receive_some(65536)
        self.buf += data
        return data == b""

    async def _more(self) -> None:
        data = await self.stream.receive_some(65536)
        assert data, "the server closed the connection mid-response"
        self.buf += data


async def test_many_requests_share_one_keep_alive_connection(node: LiveNode) -> None:
    auth = f"Authorization: Bearer {node.admin_token}\r\n".encode()
    with trio.fail_after(TIMEOUT_S):
        conn = await RawHttp.connect(node.url)
        async with conn.stream:
            for _ in range(20):
                await conn.stream.send_all(b"GET /api/v1/networks HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
                status, headers, body = await conn.response()
                assert status == "HTTP/1.1 200 "
                assert "connection" not in headers
                assert json.loads(body) == {"items": [], "next_cursor": None}


async def test_an_unread_body_closes_the_connection_instead_of_hanging_it(node: LiveNode) -> None:
    # The handler answers before the body arrives; the body and the next request follow on the
    # same connection. The node must say it closes, and close, rather than leave a dead connection.
    for head in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n",
        b"PUT /api/v1/devices HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n",  # 405
        b"POST /api/v1/networks HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n",  # 401
    ):
        with trio.fail_after(TIMEOUT_S):
            conn = await RawHttp.connect(node.url)
            async with conn.stream:
                await conn.stream.send_all(head)
                status, headers, _ = await conn.response()
                assert headers.get("connection") == "close", (head, status)
                await conn.stream.send_all(b'{"a": 1}\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
                assert await conn.closed_by_server(), head


async def test_a_body_sent_with_the_request_keeps_the_connection(node: LiveNode) -> None:
    body = b'{"name": "net"}'
    head = (
        f"POST /api/v1/networks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {node.admin_token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with trio.fail_after(TIMEOUT_S):
        conn = await RawHttp.connect(node.url)
        async with conn.stream:
            for _ in range(3):
                await conn.stream.send_all(head + body)
                status, headers, _ = await conn.response()
                assert status.startswith("HTTP/1.1 201")
                assert "connection" not in headers


async def test_idle_keep_alive_connections_are_closed_after_the_timeout(
    node: LiveNode, jump_clock: trio.testing.MockClock
) -> None:
    idle_s = node.handle.settings.api.keep_alive_timeout_s
    with trio.fail_after(idle_s + TIMEOUT_S):
        conn = await RawHttp.connect(node.url)
        async with conn.stream:
            await conn.stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await conn.response()
            assert status.startswith("HTTP/1.1 200")
            await trio.testing.wait_all_tasks_blocked()  # the server has armed its idle timer
            jump_clock.jump(idle_s + 1)
            assert await conn.closed_by_server()
