"""Request size (413) and rate limits (429, Retry-After, X-RateLimit-*) against a live node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import trio
import trio.testing

from tests.api.helpers import LiveNode, StartNode, assert_problem, create_network, device_body

MAX_BODY = 4096


def big_device(network_id: str, size: int) -> bytes:
    body = device_body(network_id, name="x")
    body["hardware_spec"] = {"pad": "x" * size}
    return httpx.Request("POST", "http://x", json=body).content


async def test_bodies_over_the_limit_are_413(start_node: StartNode) -> None:
    node = await start_node(**{"api.max_body_bytes": MAX_BODY})
    admin = node.admin()
    net = await create_network(admin)
    headers = {"Content-Type": "application/json"}

    fits = big_device(net, 1000)
    assert (await admin.post("/api/v1/devices", content=fits, headers=headers)).status_code == 201

    too_big = big_device(net, MAX_BODY)
    assert len(too_big) > MAX_BODY
    r = await admin.post("/api/v1/devices", content=too_big, headers=headers)  # with Content-Length
    assert_problem(r, 413, code="too-large", detail="request body too large")
    assert r.headers["Connection"] == "close"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(too_big), 1000):
            yield too_big[i : i + 1000]

    r = await admin.post("/api/v1/devices", content=chunks(), headers=headers)  # chunked, no length
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    assert_problem(r, 413, code="too-large")
    r = await admin.put(f"/api/v1/networks/{net}", content=too_big, headers=headers)
    assert_problem(r, 413)
    assert len((await admin.get("/api/v1/devices")).json()["items"]) == 1


async def test_an_announced_huge_body_is_refused_before_it_is_sent(start_node: StartNode) -> None:
    node = await start_node(**{"api.max_body_bytes": MAX_BODY})
    url = urlsplit(node.url)
    head = (
        f"POST /api/v1/networks HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {node.admin_token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000000\r\n\r\n"
    ).encode()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(url.hostname or "127.0.0.1", url.port or 0)
        async with stream:
            await stream.send_all(head)  # and never a byte of the body
            reply = b""
            while b"\r\n\r\n" not in reply:
                data = await stream.receive_some(65536)
                assert data, "connection closed without an answer"
                reply += data
    assert reply.startswith(b"HTTP/1.1 413")


async def test_token_rate_limit_answers_429_with_retry_after(
    start_node: StartNode, jump_clock: trio.testing.MockClock
) -> None:
    node = await start_node(**{"api.burst_per_token": 3, "api.rate_per_token": 0.5})
    secret, _ = await node.token("viewer")
    client = node.client(secret)
    remaining = []
    for _ in range(3):
        r = await client.get("/api/v1/networks")
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "3"
        remaining.append(int(r.headers["X-RateLimit-Remaining"]))
        assert int(r.headers["X-RateLimit-Reset"]) >= 1
    assert remaining == [2, 1, 0]

    r = await client.get("/api/v1/networks")
    assert_problem(r, 429, code="rate-limited", detail="rate limit exceeded")
    assert r.headers["Retry-After"] == "2"  # one token at 0.5/s
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("3", "0")
    assert r.headers["X-RateLimit-Reset"] == "6"  # three tokens at 0.5/s
    assert_problem(await client.post("/api/v1/networks", json={"name": "n"}), 429)

    other = node.client((await node.token("viewer"))[0])
    assert (await other.get("/api/v1/networks")).status_code == 200  # buckets are per token

    jump_clock.jump(2)
    assert (await client.get("/api/v1/networks")).status_code == 200
    assert_problem(await client.get("/api/v1/networks"), 429)


async def test_ip_rate_limit_covers_anonymous_and_bad_credentials(start_node: StartNode) -> None:
    node = await start_node(**{"api.burst_per_ip": 3, "api.rate_per_ip": 0.1})
    anonymous = node.client()
    assert (await anonymous.get("/healthz")).status_code == 200
    r = await anonymous.get("/api/v1/devices", headers={"Authorization": "Bearer asg_guess"})
    assert r.status_code == 401
    assert r.headers["X-RateLimit-Remaining"] == "1"
    assert (await anonymous.get("/readyz")).headers["X-RateLimit-Remaining"] == "0"
    r = await node.admin().get("/api/v1/devices")
    assert_problem(r, 429, code="rate-limited")
    assert r.headers["Retry-After"] == "10"


async def test_rate_headers_are_on_every_kind_of_response(node: LiveNode) -> None:
    admin = node.admin()
    for r in [
        await admin.get("/api/v1/devices"),
        await admin.get("/api/v1/devices/nope"),
        await admin.post("/api/v1/networks", json={}),
        await admin.get("/api/v1/nothing-here"),
        await node.client().get("/api/v1/devices"),
        await node.client().get("/healthz"),
    ]:
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            assert name in r.headers, (r.request.url, r.status_code, name)
        assert r.headers["X-Request-Id"]
