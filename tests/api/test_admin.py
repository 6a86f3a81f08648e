"""Admin and operational endpoints against a live node: stats, logs, health, readiness, metrics, docs,
the OpenAPI document, unknown paths and methods, CORS."""

from __future__ import annotations

import httpx

from tests.api.helpers import LiveNode, StartNode, assert_problem, create_network, register


async def test_stats(node: LiveNode, admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    for _ in range(2):
        await register(admin, net)
    r = await admin.get("/api/v1/admin/stats")
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["node_id"] == node.handle.node_id
    assert stats["uptime_s"] >= 0
    assert stats["store_bytes"] > 0
    registry = stats["services"]["registry"]
    assert registry["devices"] == {"online": 2, "inactive": 0, "offline": 0}
    assert (registry["networks"], registry["connections"]) == (1, 0)
    assert stats["services"]["store"]["writes"] >= 3


async def test_logs_newest_first_with_level_and_paging(admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    await register(admin, net, name="first")
    await register(admin, net, name="second")
    r = await admin.get("/api/v1/admin/logs", params={"level": "INFO", "limit": 2})
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] >= 4  # hypercorn's start line, node ready, two registrations
    first, second = page["items"]
    assert first["seq"] > second["seq"]
    assert (first["message"], first["logger"], first["level"]) == (
        "device registered",
        "asgard.registry",
        "INFO",
    )
    assert first["fields"]["network_id"] == net
    offset = (await admin.get("/api/v1/admin/logs", params={"level": "INFO", "limit": 1, "offset": 1})).json()
    assert offset["items"] == [second]
    errors = (await admin.get("/api/v1/admin/logs", params={"level": "ERROR"})).json()
    assert errors == {"total": 0, "items": []}
    assert_problem(await admin.get("/api/v1/admin/logs", params={"limit": 1001}), 400, detail="limit")
    assert_problem(await admin.get("/api/v1/admin/logs", params={"level": "LOUD"}), 400, detail="level")


async def test_health_and_readiness_need_no_token(node: LiveNode) -> None:
    anonymous = node.client()
    r = await anonymous.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = await anonymous.get("/readyz")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "node_id": node.handle.node_id})
    node.handle.api.state = "stopping"  # what a shutdown does first
    r = await anonymous.get("/readyz")
    assert (r.status_code, r.json()["status"]) == (503, "stopping")
    assert (await anonymous.get("/healthz")).json() == {"status": "stopping"}


async def test_metrics(node: LiveNode, admin: httpx.AsyncClient) -> None:
    await register(admin, await create_network(admin))
    viewer = node.client((await node.token("viewer"))[0])
    r = await viewer.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = r.text.splitlines()
    assert f'asgard_info{{version="0.1.0",node_id="{node.handle.node_id}"}} 1' in lines
    assert "asgard_registry_devices_online 1" in lines
    assert any(line.startswith("asgard_uptime_seconds ") for line in lines)
    for line in lines:
        assert line.startswith("#") or len(line.split(" ")) == 2, line  # name value


async def test_openapi_document_covers_every_route(node: LiveNode) -> None:
    r = await node.client().get("/openapi.json")  # public by default: it holds no data
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/{device_id}",
        "/api/v1/devices/{device_id}/heartbeat",
        "/api/v1/networks",
        "/api/v1/networks/{network_id}",
        "/api/v1/networks/{network_id}/topology",
        "/api/v1/networks/{network_id}/members",
        "/api/v1/networks/{network_id}/members/{device_id}",
        "/api/v1/connections",
        "/api/v1/connections/{connection_id}",
        "/api/v1/connections/{connection_id}/heartbeat",
        "/api/v1/tokens",
        "/api/v1/tokens/{token_id}",
        "/api/v1/admin/stats",
        "/api/v1/admin/logs",
        "/api/v1/admin/audit",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in paths, path
    assert "/docs" not in paths
    register = paths["/api/v1/devices"]["post"]
    assert set(register["responses"]) >= {"200", "201", "400", "401", "403", "404", "409", "413", "429"}
    problem = register["responses"]["401"]["content"]
    assert list(problem) == ["application/problem+json"]
    device_in = register["requestBody"]["content"]["application/json"]["schema"]
    assert set(device_in["required"]) == {"device_id", "network_id", "world_type"}
    assert device_in["additionalProperties"] is False  # the same model that validates requests
    assert paths["/healthz"]["get"]["security"] == []
    [param] = paths["/api/v1/devices/{device_id}"]["get"]["parameters"]
    assert (param["name"], param["in"], param["required"]) == ("device_id", "path", True)
    assert param["schema"]["pattern"] == device_in["properties"]["device_id"]["pattern"]  # a UUID


async def test_docs_page(node: LiveNode) -> None:
    r = await node.client().get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<h2>devices</h2>" in r.text
    assert "/api/v1/devices/{device_id}" in r.text
    assert "<script" not in r.text


async def test_docs_can_require_a_token(start_node: StartNode) -> None:
    node = await start_node(**{"api.public_docs": False})
    for path in ("/openapi.json", "/docs"):
        assert (await node.client().get(path)).status_code == 401
        assert (await node.admin().get(path)).status_code == 200


async def test_unknown_paths_and_methods(admin: httpx.AsyncClient) -> None:
    assert_problem(await admin.get("/api/v1/gadgets"), 404, detail="no such endpoint: /api/v1/gadgets")
    r = await admin.put("/api/v1/devices", json={})
    assert_problem(r, 405, code="method-not-allowed", detail="method PUT not allowed")
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}


async def test_cors_allows_only_configured_origins(start_node: StartNode) -> None:
    node = await start_node(**{"api.cors_origins": ["https://home.example"]})
    admin = node.admin()
    r = await admin.get("/api/v1/devices", headers={"Origin": "https://home.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://home.example"
    assert "X-RateLimit-Remaining" in r.headers["Access-Control-Expose-Headers"]
    r = await admin.get("/api/v1/devices", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    preflight = await node.client().options(
        "/api/v1/devices",
        headers={"Origin": "https://home.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200  # preflights carry no token
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://home.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
