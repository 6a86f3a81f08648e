"""/api/v1/connections against a live node: open, read, list with filters and pages, heartbeat, close."""

from __future__ import annotations

from datetime import datetime

import httpx
import trio.testing

from tests.api.helpers import StartNode, assert_problem, create_network, new_id, register


async def test_open_get_heartbeat_close(admin: httpx.AsyncClient, jump_clock: trio.testing.MockClock) -> None:
    net = await create_network(admin)
    a, b = (await register(admin, net))["device_id"], (await register(admin, net))["device_id"]
    r = await admin.post("/api/v1/connections", json={"source_device_id": a, "target_device_id": b.upper()})
    assert r.status_code == 201, r.text
    conn = r.json()
    assert r.headers["Location"] == f"/api/v1/connections/{conn['connection_id']}"
    assert (conn["source_device_id"], conn["target_device_id"], conn["status"]) == (a, b, "open")
    assert conn["established_at"] == conn["last_heartbeat"]
    assert conn["closed_at"] is None
    assert (await admin.get(r.headers["Location"])).json() == conn

    jump_clock.jump(3)
    r = await admin.post(f"/api/v1/connections/{conn['connection_id']}/heartbeat")
    assert r.status_code == 200, r.text
    beat = r.json()["last_heartbeat"]
    assert datetime.fromisoformat(beat) > datetime.fromisoformat(conn["last_heartbeat"])
    assert (await admin.get(f"/api/v1/connections/{conn['connection_id']}")).json()["last_heartbeat"] == beat

    r = await admin.delete(f"/api/v1/connections/{conn['connection_id']}")
    assert r.status_code == 200, r.text
    closed = r.json()
    assert closed["status"] == "closed"
    assert closed["closed_at"] is not None
    assert (await admin.get(f"/api/v1/connections/{conn['connection_id']}")).json() == closed
    again = await admin.delete(f"/api/v1/connections/{conn['connection_id']}")
    assert again.json() == closed  # closing twice changes nothing
    r = await admin.post(f"/api/v1/connections/{conn['connection_id']}/heartbeat")
    assert_problem(r, 409, code="conflict", detail="is closed")


async def test_a_connection_to_the_node_has_no_target(admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    a = (await register(admin, net))["device_id"]
    r = await admin.post("/api/v1/connections", json={"source_device_id": a})
    assert r.status_code == 201, r.text
    assert r.json()["target_device_id"] is None
    assert r.json()["kind"] == "link"


async def test_open_rejects_bad_input(admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    a = (await register(admin, net))["device_id"]
    missing = new_id()
    assert_problem(
        await admin.post("/api/v1/connections", json={"source_device_id": a, "target_device_id": a}),
        400,
        detail="target_device_id: a device cannot connect to itself",
    )
    assert_problem(
        await admin.post("/api/v1/connections", json={"source_device_id": missing}),
        404,
        detail=f"device {missing} not found",
    )
    assert_problem(
        await admin.post("/api/v1/connections", json={"source_device_id": a, "target_device_id": missing}),
        404,
    )
    assert_problem(await admin.post("/api/v1/connections", json={}), 400, detail="source_device_id")
    assert_problem(
        await admin.post("/api/v1/connections", json={"source_device_id": a, "kind": "x"}), 400, detail="kind"
    )
    assert_problem(await admin.get(f"/api/v1/connections/{new_id()}"), 404)
    assert_problem(await admin.get("/api/v1/connections/c1"), 400, detail="connection_id: expected a UUID")
    assert_problem(await admin.post(f"/api/v1/connections/{new_id()}/heartbeat"), 404)
    assert_problem(await admin.delete(f"/api/v1/connections/{new_id()}"), 404)


async def test_list_filters_and_pages(start_node: StartNode) -> None:
    node = await start_node(**{"api.page_size_default": 3, "api.page_size_max": 3})
    admin = node.admin()
    home, office = await create_network(admin, "home"), await create_network(admin, "office")
    a, b = (await register(admin, home))["device_id"], (await register(admin, home))["device_id"]
    c = (await register(admin, office))["device_id"]
    made = []
    for source, target in [(a, b), (a, None), (b, a), (c, None), (c, a)]:
        body = {"source_device_id": source, "target_device_id": target}
        made.append((await admin.post("/api/v1/connections", json=body)).json()["connection_id"])
    await admin.delete(f"/api/v1/connections/{made[1]}")

    async def ids(**params: str) -> set[str]:
        found: list[str] = []
        query: dict[str, str] = dict(params)
        while True:
            r = await admin.get("/api/v1/connections", params=query)
            assert r.status_code == 200, r.text
            assert len(r.json()["items"]) <= 3
            found += [x["connection_id"] for x in r.json()["items"]]
            if r.json()["next_cursor"] is None:
                break
            query["cursor"] = r.json()["next_cursor"]
        assert len(found) == len(set(found))
        return set(found)

    assert await ids() == set(made)
    assert await ids(device_id=a) == {made[0], made[1], made[2], made[4]}
    assert await ids(network_id=office) == {made[3], made[4]}  # by the source device's networks
    assert await ids(status="closed") == {made[1]}
    assert await ids(status="open", device_id=a) == {made[0], made[2], made[4]}
    assert_problem(await admin.get("/api/v1/connections", params={"status": "half"}), 400, detail="status")
    assert_problem(
        await admin.get("/api/v1/connections", params={"limit": 4}), 400, detail="limit: at most 3"
    )
    assert_problem(await admin.get("/api/v1/connections", params={"device_id": "a"}), 400, detail="device_id")


async def test_unregistering_a_device_removes_its_connections(admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    a, b = (await register(admin, net))["device_id"], (await register(admin, net))["device_id"]
    conn = (
        await admin.post("/api/v1/connections", json={"source_device_id": a, "target_device_id": b})
    ).json()
    assert (await admin.delete(f"/api/v1/devices/{b}")).status_code == 204
    assert_problem(await admin.get(f"/api/v1/connections/{conn['connection_id']}"), 404)
