"""Network scoping: a token limited to network A gets 404 for network B's objects, with nothing of B in
the answer (it is indistinguishable from an id that does not exist), and every list is filtered."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from tests.api.helpers import LiveNode, assert_problem, create_network, device_body, new_id, register


@dataclass
class TwoNetworks:
    a: str
    b: str
    a_device: str
    b_device: str
    a_conn: str
    b_conn: str
    b_secrets: tuple[str, ...]  # strings that only B's objects contain


async def two_networks(admin: httpx.AsyncClient) -> TwoNetworks:
    a, b = await create_network(admin, "alpha-net"), await create_network(admin, "bravo-secret-name")
    a_dev = (await register(admin, a, name="alpha-lamp"))["device_id"]
    b_dev = (
        await register(admin, b, name="bravo-camera", capabilities=["bravo.cap"], hardware_spec={"b": "spec"})
    )["device_id"]
    a_conn = (await admin.post("/api/v1/connections", json={"source_device_id": a_dev})).json()[
        "connection_id"
    ]
    b_conn = (await admin.post("/api/v1/connections", json={"source_device_id": b_dev})).json()[
        "connection_id"
    ]
    return TwoNetworks(
        a, b, a_dev, b_dev, a_conn, b_conn, ("bravo-camera", "bravo-secret-name", "bravo.cap", b)
    )


@pytest.fixture(params=["device", "viewer", "service"])
async def scoped(request: pytest.FixtureRequest, node: LiveNode) -> tuple[httpx.AsyncClient, TwoNetworks]:
    """A client whose token is limited to network A (a device token, or a viewer/service with networks)."""
    world = await two_networks(node.admin())
    device_id = world.a_device if request.param == "device" else None
    secret, _ = await node.token(request.param, device_id=device_id, networks=(world.a,))
    return node.client(secret), world


def assert_hidden(r: httpx.Response, world: TwoNetworks, kind: str, object_id: str) -> None:
    """A 404 saying only that the id (which the caller sent) was not found."""
    assert_problem(r, 404, code="not-found")
    assert r.json()["detail"] == f"{kind} {object_id} not found"
    body = r.text.replace(object_id, "<id>")
    for secret in world.b_secrets:
        assert secret not in body


async def test_reads_of_another_networks_objects_are_404_without_data(
    scoped: tuple[httpx.AsyncClient, TwoNetworks],
) -> None:
    client, w = scoped
    assert_hidden(await client.get(f"/api/v1/devices/{w.b_device}"), w, "device", w.b_device)
    assert_hidden(await client.get(f"/api/v1/networks/{w.b}"), w, "network", w.b)
    assert_hidden(await client.get(f"/api/v1/networks/{w.b}/topology"), w, "network", w.b)
    assert_hidden(await client.get(f"/api/v1/connections/{w.b_conn}"), w, "connection", w.b_conn)

    # Exactly what an id that does not exist gets, apart from the id itself.
    ghost = new_id()
    for real, path in [(w.b_device, "/api/v1/devices/{}"), (w.b, "/api/v1/networks/{}")]:
        hidden = await client.get(path.format(real))
        absent = await client.get(path.format(ghost))
        assert hidden.text.replace(real, "<id>") == absent.text.replace(ghost, "<id>")

    # Its own network's objects are visible.
    assert (await client.get(f"/api/v1/devices/{w.a_device}")).status_code == 200
    assert (await client.get(f"/api/v1/networks/{w.a}")).status_code == 200
    assert (await client.get(f"/api/v1/connections/{w.a_conn}")).status_code == 200


async def test_lists_are_filtered_to_the_tokens_networks(
    scoped: tuple[httpx.AsyncClient, TwoNetworks],
) -> None:
    client, w = scoped
    devices = await client.get("/api/v1/devices")
    assert [d["device_id"] for d in devices.json()["items"]] == [w.a_device]
    networks = await client.get("/api/v1/networks")
    assert [n["network_id"] for n in networks.json()["items"]] == [w.a]
    connections = await client.get("/api/v1/connections")
    assert [c["connection_id"] for c in connections.json()["items"]] == [w.a_conn]
    for r in (devices, networks, connections):
        for secret in w.b_secrets:
            assert secret not in r.text
    for params in ({"network_id": w.b}, {"capability": "bravo.cap"}):
        assert (await client.get("/api/v1/devices", params=params)).json()["items"] == []
    assert (await client.get("/api/v1/connections", params={"network_id": w.b})).json()["items"] == []
    assert (await client.get("/api/v1/connections", params={"device_id": w.b_device})).json()["items"] == []


async def test_writes_into_another_network_are_404(node: LiveNode) -> None:
    admin = node.admin()
    w = await two_networks(admin)
    device = node.client((await node.token("device", device_id=w.a_device, networks=(w.a,)))[0])
    service = node.client((await node.token("service", networks=(w.a,)))[0])

    for client in (device, service):
        r = await client.post("/api/v1/devices", json=device_body(w.b, w.a_device, move=True))
        assert_hidden(r, w, "network", w.b)
        assert_hidden(
            await client.patch(f"/api/v1/devices/{w.b_device}", json={"name": "x"}), w, "device", w.b_device
        )
        assert_hidden(await client.delete(f"/api/v1/connections/{w.b_conn}"), w, "connection", w.b_conn)
    assert_hidden(await service.delete(f"/api/v1/devices/{w.b_device}"), w, "device", w.b_device)
    assert_hidden(await service.delete(f"/api/v1/networks/{w.b}"), w, "network", w.b)
    r = await service.post("/api/v1/devices", json=device_body(w.b))
    assert_hidden(r, w, "network", w.b)
    r = await service.post("/api/v1/networks", json={"name": "new"})
    assert_problem(r, 403, detail="a token restricted to networks cannot create networks")

    after = (await admin.get(f"/api/v1/devices/{w.b_device}")).json()
    assert (after["name"], after["network_id"]) == ("bravo-camera", w.b)
    assert (await admin.get(f"/api/v1/connections/{w.b_conn}")).json()["status"] == "open"
