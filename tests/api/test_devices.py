"""/api/v1/devices against a live node: registration, re-registration, move, updates, heartbeats,
deletion, list filters and pagination, and precise 400s."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from node.registry import RegistryEvent
from tests.api.helpers import (
    LiveNode,
    StartNode,
    assert_problem,
    create_network,
    device_body,
    new_id,
    register,
)


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_register_answers_201_with_location_and_the_stored_device(admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    body = device_body(net, capabilities=["audio.play", "audio.play", "light.dim"])
    r = await admin.post("/api/v1/devices", json=body)
    assert r.status_code == 201, r.text
    device = r.json()
    assert r.headers["Location"] == f"/api/v1/devices/{body['device_id']}"
    assert device["device_id"] == body["device_id"]
    assert device["network_id"] == net
    assert device["networks"] == [net]
    assert device["capabilities"] == ["audio.play", "light.dim"]  # de-duplicated, order kept
    assert device["hardware_spec"] == {"cpu": "arm"}
    assert device["status"] == "online"
    assert device["registered_at"] == device["updated_at"] == device["last_seen"]
    got = await admin.get(r.headers["Location"])
    assert got.status_code == 200
    assert got.json() == device


async def test_uppercase_ids_are_stored_canonical(admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    device_id = new_id()
    r = await admin.post("/api/v1/devices", json=device_body(net.upper(), device_id.upper()))
    assert r.status_code == 201, r.text
    assert (r.json()["device_id"], r.json()["network_id"]) == (device_id, net)
    assert (await admin.get(f"/api/v1/devices/{device_id.upper()}")).json()["device_id"] == device_id


async def test_reregistration_updates_metadata_and_keeps_registered_at(
    admin: httpx.AsyncClient, jump_clock: trio.testing.MockClock
) -> None:
    net = await create_network(admin)
    first = await register(admin, net, name="old", world_type="virtual")
    jump_clock.jump(5)
    body = device_body(net, first["device_id"], name="new", capabilities=["x.y"], hardware_spec={"ram": 2})
    r = await admin.post("/api/v1/devices", json=body)
    assert r.status_code == 200, r.text
    again = r.json()
    assert again["registered_at"] == first["registered_at"]
    assert when(again["updated_at"]) > when(first["updated_at"])
    assert (again["name"], again["world_type"], again["capabilities"]) == ("new", "physical", ["x.y"])
    assert again["hardware_spec"] == {"ram": 2}
    assert (await admin.get(f"/api/v1/devices/{first['device_id']}")).json() == again


async def test_reregistration_into_another_network_needs_move(admin: httpx.AsyncClient) -> None:
    a, b, c = [await create_network(admin, n) for n in "abc"]
    device = await register(admin, a)
    dev_id = device["device_id"]
    assert (await admin.post(f"/api/v1/networks/{c}/members", json={"device_id": dev_id})).status_code == 200

    r = await admin.post("/api/v1/devices", json=device_body(b, dev_id))
    assert_problem(r, 409, code="conflict", detail="move=true")
    assert (await admin.get(f"/api/v1/devices/{dev_id}")).json()["network_id"] == a

    r = await admin.post("/api/v1/devices", json=device_body(b, dev_id, move=True))
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["network_id"] == b
    assert moved["registered_at"] == device["registered_at"]
    assert sorted(moved["networks"]) == sorted([b, c])  # left the old primary, kept the other membership
    listed = (await admin.get("/api/v1/devices", params={"network_id": a})).json()["items"]
    assert listed == []


async def test_register_into_unknown_network_is_404(admin: httpx.AsyncClient) -> None:
    missing = new_id()
    r = await admin.post("/api/v1/devices", json=device_body(missing))
    assert_problem(r, 404, code="not-found", detail=f"network {missing} not found")


@pytest.mark.parametrize(
    ("change", "field_named"),
    [
        ({"device_id": "not-a-uuid"}, "device_id"),
        ({"device_id": "00000000-0000-0000-0000-000000000000"}, "device_id: the nil UUID is reserved"),
        ({"network_id": 42}, "network_id"),
        ({"world_type": "astral"}, "world_type: expected one of physical, virtual, simulated"),
        ({"world_type": ""}, "world_type"),
        ({"capabilities": ["no spaces"]}, "capabilities: names are"),
        ({"capabilities": [f"c{i}" for i in range(65)]}, "capabilities: at most 64 entries"),
        ({"capabilities": ["x" * 65]}, "capabilities: names are at most 64 characters"),
        ({"capabilities": "light"}, "capabilities"),
        ({"hardware_spec": {"blob": "x" * 9000}}, "hardware_spec: at most 8192 bytes"),
        ({"hardware_spec": [1, 2]}, "hardware_spec"),
        ({"name": "x" * 129}, "name"),
        ({"name": "bell\x07"}, "name: control characters are not allowed"),
        ({"colour": "red"}, "colour"),
        ({"move": "perhaps"}, "move"),
    ],
)
async def test_register_rejects_bad_input_naming_the_field(
    admin: httpx.AsyncClient, change: dict[str, Any], field_named: str
) -> None:
    net = await create_network(admin)
    r = await admin.post("/api/v1/devices", json=device_body(net) | change)
    assert_problem(r, 400, code="invalid-input", detail=field_named)


async def test_missing_field_is_named_in_errors(admin: httpx.AsyncClient) -> None:
    body = device_body(new_id())
    del body["world_type"]
    r = await admin.post("/api/v1/devices", json=body)
    assert_problem(r, 400, detail="world_type")
    assert {"field": "world_type", "message": "Field required"} in r.json()["errors"]


@pytest.mark.parametrize(
    ("content", "headers", "detail"),
    [
        (b"{not json", {"Content-Type": "application/json"}, "request body: not valid JSON"),
        (b'{"name": "\xff"}', {"Content-Type": "application/json"}, "request body: not UTF-8"),
        (b"[1, 2]", {"Content-Type": "application/json"}, "body: Input should be a valid dictionary"),
        (
            b"device_id=1",
            {"Content-Type": "application/x-www-form-urlencoded"},
            "expected Content-Type application/json",
        ),
        (b"", {}, "expected Content-Type application/json, got ''"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_a_precise_400(
    admin: httpx.AsyncClient, content: bytes, headers: dict[str, str], detail: str
) -> None:
    r = await admin.post("/api/v1/devices", content=content, headers=headers)
    assert_problem(r, 400, code="invalid-input", detail=detail)


async def test_get_put_patch_delete_one_device(
    admin: httpx.AsyncClient, jump_clock: trio.testing.MockClock
) -> None:
    net = await create_network(admin)
    device = await register(admin, net)
    url = f"/api/v1/devices/{device['device_id']}"
    jump_clock.jump(1)

    put = {"name": "desk", "world_type": "virtual", "capabilities": ["a.b"], "hardware_spec": {}}
    r = await admin.put(url, json=put)
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in put} == put
    assert r.json()["registered_at"] == device["registered_at"]
    assert when(r.json()["updated_at"]) > when(device["updated_at"])
    assert_problem(await admin.put(url, json={"name": "desk"}), 400, detail="world_type")

    r = await admin.patch(url, json={"capabilities": ["c.d", "e"]})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["capabilities"]) == ("desk", ["c.d", "e"])
    assert_problem(await admin.patch(url, json={"world_type": "astral"}), 400, detail="world_type")
    assert_problem(await admin.patch(url, json={"network_id": net}), 400, detail="network_id")

    listed = (await admin.get("/api/v1/devices", params={"capability": "c.d"})).json()["items"]
    assert [d["device_id"] for d in listed] == [device["device_id"]]
    assert (await admin.get("/api/v1/devices", params={"capability": "a.b"})).json()["items"] == []

    r = await admin.delete(url)
    assert r.status_code == 204
    assert r.content == b""
    assert_problem(await admin.get(url), 404, code="not-found")
    assert_problem(await admin.delete(url), 404, code="not-found")
    assert_problem(await admin.put(url, json=put), 404)
    assert (await admin.get(f"/api/v1/networks/{net}")).json()["device_count"] == 0


async def test_unknown_and_malformed_device_ids(admin: httpx.AsyncClient) -> None:
    missing = new_id()
    assert_problem(await admin.get(f"/api/v1/devices/{missing}"), 404, detail=f"device {missing} not found")
    for method in ("GET", "DELETE", "PATCH"):
        r = await admin.request(method, "/api/v1/devices/lamp", json={} if method == "PATCH" else None)
        assert_problem(r, 400, detail="device_id: expected a UUID")


async def test_heartbeat_moves_last_seen(
    admin: httpx.AsyncClient, jump_clock: trio.testing.MockClock
) -> None:
    net = await create_network(admin)
    device = await register(admin, net)
    jump_clock.jump(2)
    r = await admin.post(f"/api/v1/devices/{device['device_id']}/heartbeat")
    assert r.status_code == 200, r.text
    assert when(r.json()["last_seen"]) > when(device["last_seen"])
    assert (await admin.get(f"/api/v1/devices/{device['device_id']}")).json()["last_seen"] == r.json()[
        "last_seen"
    ]
    assert_problem(await admin.post(f"/api/v1/devices/{new_id()}/heartbeat"), 404)


async def test_missed_heartbeats_make_devices_inactive_and_a_heartbeat_brings_one_back(
    node: LiveNode, admin: httpx.AsyncClient, jump_clock: trio.testing.MockClock
) -> None:
    net = await create_network(admin)
    devices = [await register(admin, net) for _ in range(3)]
    settings = node.handle.settings.registry
    async with node.handle.registry.subscribe() as events:
        jump_clock.jump(settings.heartbeat_interval_s * settings.inactive_after_missed + 1)
        await wait_status_events(events, {d["device_id"] for d in devices}, "inactive")
    back = devices[0]["device_id"]
    r = await admin.post(f"/api/v1/devices/{back}/heartbeat")
    assert r.json()["status"] == "online"

    async def ids(status: str) -> set[str]:
        r = await admin.get("/api/v1/devices", params={"status": status})
        return {d["device_id"] for d in r.json()["items"]}

    assert await ids("online") == {back}
    assert await ids("inactive") == {d["device_id"] for d in devices[1:]}
    assert await ids("offline") == set()
    assert_problem(await admin.get("/api/v1/devices", params={"status": "asleep"}), 400, detail="status")


async def wait_status_events(
    events: trio.MemoryReceiveChannel[RegistryEvent], device_ids: set[str], new: str
) -> None:
    pending = set(device_ids)
    with trio.fail_after(10):
        async for ev in events:
            if ev.kind == "status" and ev.new == new:
                pending.discard(ev.device_id)
            if not pending:
                return


async def test_list_filters(admin: httpx.AsyncClient) -> None:
    home, office = await create_network(admin, "home"), await create_network(admin, "office")
    lamp = await register(admin, home, world_type="physical", capabilities=["light.dim"])
    bot = await register(admin, home, world_type="virtual", capabilities=["chat", "light.dim"])
    sim = await register(admin, office, world_type="simulated", capabilities=["chat"])
    r = await admin.post(f"/api/v1/networks/{office}/members", json={"device_id": lamp["device_id"]})
    assert r.status_code == 200, r.text

    async def ids(**params: str) -> set[str]:
        r = await admin.get("/api/v1/devices", params=params)
        assert r.status_code == 200, r.text
        return {d["device_id"] for d in r.json()["items"]}

    assert await ids() == {lamp["device_id"], bot["device_id"], sim["device_id"]}
    assert await ids(network_id=home) == {lamp["device_id"], bot["device_id"]}
    assert await ids(network_id=office) == {lamp["device_id"], sim["device_id"]}  # membership counts
    assert await ids(network_id=office.upper()) == {lamp["device_id"], sim["device_id"]}
    assert await ids(world_type="virtual") == {bot["device_id"]}
    assert await ids(capability="chat") == {bot["device_id"], sim["device_id"]}
    assert await ids(capability="chat", network_id=home) == {bot["device_id"]}
    assert await ids(capability="light.dim", world_type="simulated") == set()
    assert await ids(network_id=new_id()) == set()
    assert_problem(
        await admin.get("/api/v1/devices", params={"network_id": "home"}), 400, detail="network_id"
    )
    assert_problem(await admin.get("/api/v1/devices", params={"colour": "red"}), 400, detail="colour")


async def test_cursor_walk_returns_every_device_exactly_once(start_node: StartNode) -> None:
    node = await start_node(**{"api.page_size_default": 4, "api.page_size_max": 10})
    admin = node.admin()
    net = await create_network(admin)
    expected = sorted([(await register(admin, net))["device_id"] for _ in range(23)])

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        r = await admin.get("/api/v1/devices", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 5
        seen += [d["device_id"] for d in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected  # in id order, each once
    assert pages == 5

    assert len((await admin.get("/api/v1/devices")).json()["items"]) == 4  # page_size_default
    r = await admin.get("/api/v1/devices", params={"limit": 10})
    assert len(r.json()["items"]) == 10
    assert_problem(await admin.get("/api/v1/devices", params={"limit": 11}), 400, detail="limit: at most 10")
    assert_problem(await admin.get("/api/v1/devices", params={"limit": 0}), 400, detail="limit")
    assert_problem(await admin.get("/api/v1/devices", params={"cursor": "x"}), 400, detail="cursor")
    # An exact multiple of the page size ends with an empty cursor, not an empty extra page.
    r = await admin.get("/api/v1/devices", params={"limit": 3, "cursor": expected[-4]})
    assert [d["device_id"] for d in r.json()["items"]] == expected[-3:]
    assert r.json()["next_cursor"] is None
