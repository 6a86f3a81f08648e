"""Authentication (401), roles (403) and the last-admin rule (409) against a live node."""

from __future__ import annotations

import httpx
import pytest
import trio.testing

from node.auth import new_token_secret
from tests.api.helpers import LiveNode, assert_problem, create_network, device_body, new_id, register

WWW_AUTHENTICATE = 'Bearer realm="asgard"'


def assert_401(r: httpx.Response, detail: str) -> None:
    assert_problem(r, 401, code="unauthenticated", detail=detail)
    assert r.headers["WWW-Authenticate"] == WWW_AUTHENTICATE


def corrupt(token: str) -> str:
    """The same token with its last checksum character changed."""
    last = "A" if token[-1] != "A" else "B"
    return token[:-1] + last


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("Basic dXNlcjpwYXNz", "expected 'Authorization: Bearer <token>'"),
        ("Bearer", "expected 'Authorization: Bearer <token>'"),
        ("Bearer asg_short", "malformed token"),
        ("Bearer tok_0123456789abcdef", "malformed token"),
    ],
)
async def test_missing_or_malformed_credentials_are_401(
    node: LiveNode, authorization: str | None, detail: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await node.client().get("/api/v1/devices", headers=headers)
    assert_401(r, detail)


async def test_bad_checksum_and_unknown_tokens_are_401(node: LiveNode) -> None:
    assert_401(await node.client(corrupt(node.admin_token)).get("/api/v1/devices"), "malformed token")
    assert_401(await node.client(new_token_secret()).get("/api/v1/devices"), "unknown token")
    assert_401(await node.client("bearer-case " + node.admin_token).get("/api/v1/devices"), "")
    ok = await node.client(headers={"Authorization": f"bearer {node.admin_token}"}).get("/api/v1/devices")
    assert ok.status_code == 200  # the scheme is case-insensitive (RFC 9110 section 11.1)


async def test_every_protected_endpoint_needs_a_token(node: LiveNode) -> None:
    anonymous = node.client()
    some = new_id()
    for method, path in [
        ("GET", "/api/v1/devices"),
        ("POST", "/api/v1/devices"),
        ("GET", f"/api/v1/devices/{some}"),
        ("PUT", f"/api/v1/devices/{some}"),
        ("DELETE", f"/api/v1/devices/{some}"),
        ("POST", f"/api/v1/devices/{some}/heartbeat"),
        ("GET", "/api/v1/networks"),
        ("POST", "/api/v1/networks"),
        ("DELETE", f"/api/v1/networks/{some}"),
        ("GET", f"/api/v1/networks/{some}/topology"),
        ("GET", "/api/v1/connections"),
        ("POST", "/api/v1/connections"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/tok_0000000000000000"),
        ("GET", "/api/v1/admin/stats"),
        ("GET", "/api/v1/admin/logs"),
        ("GET", "/api/v1/admin/audit"),
        ("GET", "/metrics"),
    ]:
        r = await anonymous.request(method, path, json={} if method in ("POST", "PUT") else None)
        assert_401(r, "missing bearer token")


async def test_revocation_applies_to_the_next_request(node: LiveNode) -> None:
    secret, token_id = await node.token("service")
    client = node.client(secret)  # one keep-alive connection throughout
    assert (await client.get("/api/v1/devices")).status_code == 200
    r = await node.admin().delete(f"/api/v1/tokens/{token_id}")
    assert r.status_code == 200, r.text
    assert r.json()["revoked_at"] is not None
    assert_401(await client.get("/api/v1/devices"), "token revoked")


async def test_expired_tokens_are_refused(node: LiveNode, jump_clock: trio.testing.MockClock) -> None:
    secret, token_id = await node.token("viewer", expires_in_s=60)
    client = node.client(secret)
    assert (await client.get("/api/v1/networks")).status_code == 200
    jump_clock.jump(61)
    assert_401(await client.get("/api/v1/networks"), "token expired")
    listed = (await node.admin().get(f"/api/v1/tokens/{token_id}")).json()
    assert listed["expires_at"] is not None


async def test_viewer_reads_but_never_writes(node: LiveNode, admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    device = await register(admin, net)
    viewer = node.client((await node.token("viewer"))[0])
    for path in ("/api/v1/devices", f"/api/v1/devices/{device['device_id']}", "/api/v1/networks", "/metrics"):
        assert (await viewer.get(path)).status_code == 200, path
    dev = device["device_id"]
    for method, path, body in [
        ("POST", "/api/v1/devices", device_body(net)),
        ("POST", "/api/v1/devices", device_body(net, dev)),
        ("PATCH", f"/api/v1/devices/{dev}", {"name": "x"}),
        ("DELETE", f"/api/v1/devices/{dev}", None),
        ("POST", f"/api/v1/devices/{dev}/heartbeat", None),
        ("POST", "/api/v1/networks", {"name": "n"}),
        ("PATCH", f"/api/v1/networks/{net}", {"name": "n"}),
        ("DELETE", f"/api/v1/networks/{net}", None),
        ("POST", f"/api/v1/networks/{net}/members", {"device_id": dev}),
        ("POST", "/api/v1/connections", {"source_device_id": dev}),
        ("GET", "/api/v1/tokens", None),
        ("POST", "/api/v1/tokens", {"name": "t", "role": "admin"}),
        ("GET", "/api/v1/admin/stats", None),
        ("GET", "/api/v1/admin/logs", None),
        ("GET", "/api/v1/admin/audit", None),
    ]:
        r = await viewer.request(method, path, json=body)
        assert_problem(r, 403, code="permission-denied", detail="role 'viewer' may not")
    assert (await admin.get(f"/api/v1/devices/{dev}")).json() == device  # nothing changed


async def test_service_manages_the_registry_but_not_tokens_or_admin(node: LiveNode) -> None:
    service = node.client((await node.token("service"))[0])
    net = await create_network(service)
    device = await register(service, net)
    r = await service.post("/api/v1/connections", json={"source_device_id": device["device_id"]})
    assert r.status_code == 201, r.text
    assert (await service.delete(f"/api/v1/devices/{device['device_id']}")).status_code == 204
    for method, path in [
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/tokens/tok_0000000000000000"),
        ("DELETE", "/api/v1/tokens/tok_0000000000000000"),
        ("GET", "/api/v1/admin/stats"),
        ("GET", "/api/v1/admin/logs"),
        ("GET", "/api/v1/admin/audit"),
    ]:
        body = {"name": "t", "role": "admin"} if method == "POST" else None
        r = await service.request(method, path, json=body)
        assert_problem(r, 403, code="permission-denied", detail="role 'service' may not admin")


async def test_device_token_acts_only_for_its_own_device(node: LiveNode, admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    me, other = new_id(), (await register(admin, net))["device_id"]
    client = node.client((await node.token("device", device_id=me, networks=(net,)))[0])

    r = await client.post("/api/v1/devices", json=device_body(net, me))
    assert r.status_code == 201, r.text  # a device registers itself
    assert (await client.post(f"/api/v1/devices/{me}/heartbeat")).status_code == 200
    assert (await client.patch(f"/api/v1/devices/{me}", json={"name": "mine"})).json()["name"] == "mine"
    mine = await client.post("/api/v1/connections", json={"source_device_id": me, "target_device_id": other})
    assert mine.status_code == 201, mine.text
    assert (
        await client.post(f"/api/v1/connections/{mine.json()['connection_id']}/heartbeat")
    ).status_code == 200

    theirs = (await admin.post("/api/v1/connections", json={"source_device_id": other})).json()
    denied = "a device token may only"
    for method, path, body in [
        ("POST", "/api/v1/devices", device_body(net, other)),
        ("POST", "/api/v1/devices", device_body(net)),
        ("PATCH", f"/api/v1/devices/{other}", {"name": "x"}),
        ("DELETE", f"/api/v1/devices/{other}", None),
        ("POST", f"/api/v1/devices/{other}/heartbeat", None),
        ("POST", "/api/v1/connections", {"source_device_id": other}),
        ("POST", f"/api/v1/connections/{theirs['connection_id']}/heartbeat", None),
        ("DELETE", f"/api/v1/connections/{theirs['connection_id']}", None),
    ]:
        assert_problem(await client.request(method, path, json=body), 403, detail=denied)
    for method, path, body in [
        ("POST", "/api/v1/networks", {"name": "n"}),
        ("DELETE", f"/api/v1/networks/{net}", None),
        ("POST", f"/api/v1/networks/{net}/members", {"device_id": me}),
        ("GET", "/api/v1/tokens", None),
        ("GET", "/api/v1/admin/stats", None),
    ]:
        assert_problem(await client.request(method, path, json=body), 403, detail="role 'device' may not")
    assert (await admin.get(f"/api/v1/devices/{other}")).json()["name"] == "lamp"


async def test_token_lifecycle(node: LiveNode, admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    r = await admin.post(
        "/api/v1/tokens",
        json={"name": "kitchen", "role": "device", "device_id": new_id(), "networks": [net, net.upper()]},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    secret, token_id = created.pop("token"), created["token_id"]
    assert secret.startswith("asg_")
    assert r.headers["Location"] == f"/api/v1/tokens/{token_id}"
    assert created["networks"] == [net]
    assert created["revoked_at"] is None

    got = await admin.get(f"/api/v1/tokens/{token_id}")
    assert got.json() == created
    listed = await admin.get("/api/v1/tokens")
    assert created in listed.json()["items"]
    assert secret not in listed.text and secret not in got.text
    assert all("token" not in t and "token_hash" not in t for t in listed.json()["items"])

    r = await admin.delete(f"/api/v1/tokens/{token_id}")
    assert r.status_code == 200
    again = await admin.delete(f"/api/v1/tokens/{token_id}")
    assert again.json()["revoked_at"] == r.json()["revoked_at"]  # revoking twice keeps the first time
    assert_problem(await admin.get("/api/v1/tokens/tok_ffffffffffffffff"), 404, detail="not found")
    assert_problem(await admin.delete("/api/v1/tokens/tok_ffffffffffffffff"), 404)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"role": "admin"}, "name"),
        ({"name": "t", "role": "root"}, "role"),
        ({"name": "t", "role": "device", "networks": [new_id()]}, "a device token needs device_id"),
        ({"name": "t", "role": "device", "device_id": new_id()}, "a device token needs device_id"),
        ({"name": "t", "role": "admin", "device_id": new_id()}, "device_id is only for device tokens"),
        ({"name": "t", "role": "viewer", "expires_in_s": 59}, "expires_in_s"),
        ({"name": "t", "role": "viewer", "networks": ["home"]}, "networks"),
        ({"name": "t", "role": "viewer", "secret": "x"}, "secret"),
    ],
)
async def test_token_create_rejects_bad_input(
    admin: httpx.AsyncClient, body: dict[str, object], detail: str
) -> None:
    assert_problem(await admin.post("/api/v1/tokens", json=body), 400, code="invalid-input", detail=detail)


async def test_the_last_admin_token_cannot_be_revoked(node: LiveNode, admin: httpx.AsyncClient) -> None:
    tokens = (await admin.get("/api/v1/tokens")).json()["items"]
    [bootstrap] = [t["token_id"] for t in tokens if t["role"] == "admin"]
    r = await admin.delete(f"/api/v1/tokens/{bootstrap}")
    assert_problem(r, 409, code="conflict", detail="last live admin token")
    assert (await admin.get("/api/v1/devices")).status_code == 200  # still works

    second, second_id = await node.token("admin")
    assert (await admin.delete(f"/api/v1/tokens/{bootstrap}")).status_code == 200
    assert_401(await admin.get("/api/v1/devices"), "token revoked")
    successor = node.client(second)
    assert_problem(await successor.delete(f"/api/v1/tokens/{second_id}"), 409, detail="last live admin token")


async def test_an_expired_admin_does_not_count_as_live(
    node: LiveNode, jump_clock: trio.testing.MockClock
) -> None:
    _, expiring_id = await node.token("admin", expires_in_s=60)
    jump_clock.jump(61)
    tokens = (await node.admin().get("/api/v1/tokens")).json()["items"]
    [bootstrap] = [t["token_id"] for t in tokens if t["role"] == "admin" and t["token_id"] != expiring_id]
    assert_problem(await node.admin().delete(f"/api/v1/tokens/{bootstrap}"), 409)
