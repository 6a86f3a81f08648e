"""/api/v1/networks against a live node: create, read, rename, owners, memberships, topology, deletion
with and without force, and pagination."""

from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import (
    StartNode,
    assert_problem,
    create_network,
    new_id,
    register,
)


async def test_create_get_and_list(admin: httpx.AsyncClient) -> None:
    r = await admin.post("/api/v1/networks", json={"name": "home"})
    assert r.status_code == 201, r.text
    net = r.json()
    assert r.headers["Location"] == f"/api/v1/networks/{net['network_id']}"
    assert (net["name"], net["owner_device_id"], net["device_count"]) == ("home", None, 0)
    assert (await admin.get(r.headers["Location"])).json() == net
    other = await create_network(admin, "office")
    listed = (await admin.get("/api/v1/networks")).json()
    assert sorted(n["network_id"] for n in listed["items"]) == sorted([net["network_id"], other])
    assert listed["next_cursor"] is None


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name: 1 to 128 characters"),
        ({"name": "x" * 129}, "name"),
        ({"name": "tab\there"}, "name: control characters"),
        ({"name": "n", "owner_device_id": "me"}, "owner_device_id"),
        ({"name": "n", "network_id": "00000000-0000-4000-8000-000000000001"}, "network_id"),
    ],
)
async def test_create_rejects_bad_input(
    admin: httpx.AsyncClient, body: dict[str, object], detail: str
) -> None:
    assert_problem(await admin.post("/api/v1/networks", json=body), 400, code="invalid-input", detail=detail)


async def test_owner_must_exist_and_can_be_changed_and_cleared(admin: httpx.AsyncClient) -> None:
    home = await create_network(admin)
    device = await register(admin, home)
    missing = new_id()
    r = await admin.post("/api/v1/networks", json={"name": "x", "owner_device_id": missing})
    assert_problem(r, 404, detail=f"device {missing} not found")

    r = await admin.post("/api/v1/networks", json={"name": "owned", "owner_device_id": device["device_id"]})
    assert r.status_code == 201, r.text
    owned = r.json()["network_id"]
    assert r.json()["owner_device_id"] == device["device_id"]

    r = await admin.patch(f"/api/v1/networks/{owned}", json={"name": "renamed"})
    assert (r.status_code, r.json()["name"], r.json()["owner_device_id"]) == (
        200,
        "renamed",
        device["device_id"],
    )
    r = await admin.patch(f"/api/v1/networks/{owned}", json={"owner_device_id": None})
    assert (r.json()["name"], r.json()["owner_device_id"]) == ("renamed", None)
    r = await admin.put(
        f"/api/v1/networks/{owned}", json={"name": "put", "owner_device_id": device["device_id"]}
    )
    assert (r.json()["name"], r.json()["owner_device_id"]) == ("put", device["device_id"])
    r = await admin.put(f"/api/v1/networks/{owned}", json={"name": "put again"})
    assert (r.json()["name"], r.json()["owner_device_id"]) == ("put again", None)  # PUT replaces
    assert_problem(await admin.patch(f"/api/v1/networks/{owned}", json={"owner_device_id": missing}), 404)
    assert_problem(await admin.patch(f"/api/v1/networks/{owned}", json={"name": ""}), 400, detail="name")
    assert_problem(await admin.put(f"/api/v1/networks/{new_id()}", json={"name": "n"}), 404)

    # Unregistering the owner clears the owner instead of leaving a dangling id.
    await admin.put(f"/api/v1/networks/{owned}", json={"name": "o", "owner_device_id": device["device_id"]})
    assert (await admin.delete(f"/api/v1/devices/{device['device_id']}")).status_code == 204
    assert (await admin.get(f"/api/v1/networks/{owned}")).json()["owner_device_id"] is None


async def test_unknown_and_malformed_network_ids(admin: httpx.AsyncClient) -> None:
    missing = new_id()
    assert_problem(await admin.get(f"/api/v1/networks/{missing}"), 404, detail=f"network {missing} not found")
    assert_problem(await admin.delete(f"/api/v1/networks/{missing}"), 404)
    assert_problem(await admin.get(f"/api/v1/networks/{missing}/topology"), 404)
    assert_problem(await admin.get("/api/v1/networks/home"), 400, detail="network_id: expected a UUID")


async def test_memberships(admin: httpx.AsyncClient) -> None:
    home, office = await create_network(admin, "home"), await create_network(admin, "office")
    device = await register(admin, home)
    dev = device["device_id"]
    r = await admin.post(f"/api/v1/networks/{office}/members", json={"device_id": dev})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["networks"]) == sorted([home, office])
    assert r.json()["network_id"] == home
    again = await admin.post(f"/api/v1/networks/{office}/members", json={"device_id": dev})
    assert again.status_code == 200  # idempotent
    assert (await admin.get(f"/api/v1/networks/{office}")).json()["device_count"] == 1

    assert_problem(
        await admin.delete(f"/api/v1/networks/{home}/members/{dev}"), 409, detail="primary network"
    )
    r = await admin.delete(f"/api/v1/networks/{office}/members/{dev}")
    assert (r.status_code, r.content) == (204, b"")
    assert (await admin.get(f"/api/v1/devices/{dev}")).json()["networks"] == [home]
    assert_problem(await admin.delete(f"/api/v1/networks/{office}/members/{dev}"), 404, detail="not a member")
    assert_problem(await admin.post(f"/api/v1/networks/{office}/members", json={"device_id": new_id()}), 404)
    assert_problem(await admin.post(f"/api/v1/networks/{office}/members", json={}), 400, detail="device_id")


async def test_delete_refuses_a_network_with_devices_unless_forced(admin: httpx.AsyncClient) -> None:
    home, office, empty = [await create_network(admin, n) for n in ("home", "office", "empty")]
    only_home = (await register(admin, home))["device_id"]
    both = (await register(admin, home))["device_id"]
    await admin.post(f"/api/v1/networks/{office}/members", json={"device_id": both})

    r = await admin.delete(f"/api/v1/networks/{home}")
    assert_problem(r, 409, code="conflict", detail="still has 2 devices; use force=true")
    assert (await admin.get(f"/api/v1/devices/{only_home}")).status_code == 200

    r = await admin.delete(f"/api/v1/networks/{home}", params={"force": "true"})
    assert r.status_code == 200, r.text
    assert r.json() == {"network_id": home, "unregistered_devices": [only_home]}
    assert_problem(await admin.get(f"/api/v1/networks/{home}"), 404)
    assert_problem(await admin.get(f"/api/v1/devices/{only_home}"), 404)
    survivor = (await admin.get(f"/api/v1/devices/{both}")).json()
    assert (survivor["network_id"], survivor["networks"]) == (office, [office])  # primary moved

    r = await admin.delete(f"/api/v1/networks/{empty}")
    assert r.json() == {"network_id": empty, "unregistered_devices": []}
    assert_problem(
        await admin.delete(f"/api/v1/networks/{office}", params={"force": "maybe"}), 400, detail="force"
    )


async def test_topology_lists_devices_and_open_connections(admin: httpx.AsyncClient) -> None:
    home, office = await create_network(admin, "home"), await create_network(admin, "office")
    a, b = (await register(admin, home))["device_id"], (await register(admin, home))["device_id"]
    elsewhere = (await register(admin, office))["device_id"]
    open_ab = (
        await admin.post("/api/v1/connections", json={"source_device_id": a, "target_device_id": b})
    ).json()
    closed = (await admin.post("/api/v1/connections", json={"source_device_id": b})).json()
    await admin.delete(f"/api/v1/connections/{closed['connection_id']}")
    await admin.post("/api/v1/connections", json={"source_device_id": elsewhere})

    r = await admin.get(f"/api/v1/networks/{home}/topology")
    assert r.status_code == 200, r.text
    topo = r.json()
    assert topo["network"]["network_id"] == home
    assert topo["network"]["device_count"] == 2
    assert sorted(d["device_id"] for d in topo["devices"]) == sorted([a, b])
    assert [c["connection_id"] for c in topo["connections"]] == [open_ab["connection_id"]]


async def test_network_pages_cover_every_network_once(start_node: StartNode) -> None:
    node = await start_node(**{"api.page_size_default": 4, "api.page_size_max": 4})
    admin = node.admin()
    expected = sorted([await create_network(admin, f"n{i}") for i in range(9)])
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 4}
    while True:
        page = (await admin.get("/api/v1/networks", params=params)).json()
        seen += [n["network_id"] for n in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == expected
    assert_problem(await admin.get("/api/v1/networks", params={"limit": 5}), 400, detail="limit: at most 4")
