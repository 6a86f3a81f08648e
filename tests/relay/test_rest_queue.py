"""GET and DELETE /api/v1/devices/:id/queue, scoped like the rest of the registry."""

from __future__ import annotations

from datetime import datetime

import httpx

from node.auth import Role
from tests.relay.helpers import RelayEnv, deadline
from tests.relay.test_durable import offline


def api(env: RelayEnv, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=env.handle.addresses["api"], headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


async def test_queue_depth_and_purge(env: RelayEnv) -> None:
    a, b = await env.device(), await offline(env)
    ca = await env.client(a)
    async with deadline():
        for i in range(3):
            await ca.send(b.device_id, b"x" * (10 + i), durable=True)
    async with api(env, env.handle.admin_token or "") as admin:
        r = await admin.get(f"/api/v1/devices/{b.device_id}/queue")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["device_id"], body["depth"], body["bytes"]) == (str(b.device_id), 3, 3 * 48 + 33)
        assert datetime.fromisoformat(body["oldest"]).timestamp() <= env.handle.api.clock.now()
        r = await admin.delete(f"/api/v1/devices/{b.device_id}/queue")
        assert r.status_code == 200, r.text
        assert (r.json()["purged"], r.json()["bytes"]) == (3, 3 * 48 + 33)
        r = await admin.get(f"/api/v1/devices/{b.device_id}/queue")
        assert (r.json()["depth"], r.json()["oldest"]) == (0, None)
    cb = await env.client(b)
    assert cb.registered is not None and cb.registered.queued == 0


async def test_queue_endpoints_are_scoped(env: RelayEnv) -> None:
    other_net = await env.network()
    me, neighbour = await offline(env), await offline(env)
    stranger = await offline(env, other_net)
    async with api(env, me.token) as mine:
        assert (await mine.get(f"/api/v1/devices/{me.device_id}/queue")).status_code == 200
        assert (await mine.get(f"/api/v1/devices/{neighbour.device_id}/queue")).status_code == 200
        assert (await mine.get(f"/api/v1/devices/{stranger.device_id}/queue")).status_code == 404
        assert (await mine.delete(f"/api/v1/devices/{neighbour.device_id}/queue")).status_code == 403
        assert (await mine.delete(f"/api/v1/devices/{me.device_id}/queue")).status_code == 200
        assert (await mine.get("/api/v1/devices/not-a-uuid/queue")).status_code == 400
    viewer, _ = await env.handle.tokens.create(name="viewer", role=Role.VIEWER)
    async with api(env, viewer) as view:
        assert (await view.get(f"/api/v1/devices/{me.device_id}/queue")).status_code == 200
        assert (await view.delete(f"/api/v1/devices/{me.device_id}/queue")).status_code == 403


async def test_relay_statistics_and_metrics(env: RelayEnv) -> None:
    a, b = await env.device(), await env.device()
    ca, cb = await env.client(a), await env.client(b)
    async with deadline():
        await ca.send(b.device_id, b"count me")
        await cb.receive()
    async with api(env, env.handle.admin_token or "") as admin:
        stats = (await admin.get("/api/v1/admin/stats")).json()
        metrics = (await admin.get("/metrics")).text
    relay = stats["services"]["relay"]
    assert relay["sessions"] == 2
    assert relay["routed"]["direct"] == 1
    assert "asgard_relay_routed_direct 1" in metrics
    assert "asgard_relay_outbox_depth_max" in metrics
