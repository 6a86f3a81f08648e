"""A device shared between networks shows a scoped token only the networks in its scope; node-wide
metrics need an unscoped token."""

from __future__ import annotations

import httpx

from .helpers import LiveNode, assert_problem, create_network, register


async def test_shared_device_hides_networks_outside_the_scope(
    node: LiveNode, admin: httpx.AsyncClient
) -> None:
    a, b = await create_network(admin, "a"), await create_network(admin, "b")
    device = await register(admin, b)
    assert (
        await admin.post(f"/api/v1/networks/{a}/members", json={"device_id": device["device_id"]})
    ).status_code == 200
    secret, _ = await node.token("viewer", networks=(a,))
    scoped = node.client(secret)
    one = (await scoped.get(f"/api/v1/devices/{device['device_id']}")).json()
    assert one["networks"] == [a]
    assert one["network_id"] is None
    listed = (await scoped.get("/api/v1/devices")).json()["items"]
    assert [(d["device_id"], d["networks"], d["network_id"]) for d in listed] == [
        (device["device_id"], [a], None)
    ]
    topo = (await scoped.get(f"/api/v1/networks/{a}/topology")).json()
    assert [d["networks"] for d in topo["devices"]] == [[a]]
    assert b not in (await scoped.get(f"/api/v1/devices/{device['device_id']}")).text
    full = (await admin.get(f"/api/v1/devices/{device['device_id']}")).json()
    assert (full["network_id"], sorted(full["networks"])) == (b, sorted([a, b]))


async def test_metrics_need_an_unscoped_token(node: LiveNode, admin: httpx.AsyncClient) -> None:
    net = await create_network(admin)
    secret, _ = await node.token("viewer", networks=(net,))
    assert_problem(await node.client(secret).get("/metrics"), 403, code="permission-denied")
    viewer, _ = await node.token("viewer")
    assert (await node.client(viewer).get("/metrics")).status_code == 200
