"""The audit log records every state-changing request and every authentication failure, and no secret
ever reaches the audit log, the log ring or the log file."""

from __future__ import annotations

from typing import Any

import httpx

from node.auth import new_token_secret
from tests.api.helpers import LiveNode, create_network, device_body, new_id


async def audit(admin: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await admin.get("/api/v1/admin/audit", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_writes_and_their_outcomes_are_audited(node: LiveNode, admin: httpx.AsyncClient) -> None:
    admin_id = next(t["token_id"] for t in (await admin.get("/api/v1/tokens")).json()["items"])
    viewer_secret, viewer_id = await node.token("viewer")
    net = await create_network(admin)
    await admin.post("/api/v1/devices", json=device_body(net) | {"world_type": "astral"})  # 400
    await node.client(viewer_secret).post("/api/v1/networks", json={"name": "no"})  # 403
    await admin.delete(f"/api/v1/networks/{new_id()}")  # 404
    await admin.get("/api/v1/devices")  # reads are not audited

    entries = await audit(admin, actor=admin_id)
    summary = [(e["action"], e["outcome"], e["status"]) for e in entries]
    assert summary == [
        ("DELETE /api/v1/networks/<network_id>", "denied", 404),
        ("POST /api/v1/devices", "error", 400),
        ("POST /api/v1/networks", "ok", 201),
        ("POST /api/v1/tokens", "ok", 201),
    ]
    assert entries[2]["target"] == "/api/v1/networks"
    assert entries[0]["client"] == "127.0.0.1"
    [denied] = await audit(admin, actor=viewer_id)
    assert (denied["action"], denied["outcome"], denied["status"]) == ("POST /api/v1/networks", "denied", 403)
    assert [e["id"] for e in await audit(admin, outcome="denied")] == [entries[0]["id"], denied["id"]]
    older = await audit(admin, actor=admin_id, before=entries[1]["id"], limit=1)
    assert [e["id"] for e in older] == [entries[2]["id"]]


async def test_authentication_failures_are_audited(node: LiveNode, admin: httpx.AsyncClient) -> None:
    await node.client().post("/api/v1/networks", json={"name": "x"})
    await node.client(new_token_secret()).get("/api/v1/devices")
    entries = await audit(admin, action="auth.failure")
    assert [(e["actor"], e["target"], e["outcome"], e["status"], e["detail"]) for e in entries] == [
        ("anonymous", "/api/v1/devices", "denied", 401, "unknown token"),
        (
            "anonymous",
            "/api/v1/networks",
            "denied",
            401,
            "missing bearer token (Authorization: Bearer asg_...)",
        ),
    ]


async def test_no_secret_reaches_the_audit_log_or_the_logs(node: LiveNode, admin: httpx.AsyncClient) -> None:
    created = (await admin.post("/api/v1/tokens", json={"name": "svc", "role": "service"})).json()
    service_secret = created["token"]
    unknown = new_token_secret()
    typo = service_secret[:-1] + ("x" if service_secret[-1] != "x" else "y")
    service = node.client(service_secret)
    await create_network(service)
    for bad in (unknown, typo, "Basic " + service_secret, service_secret + "junk"):
        await node.client(headers={"Authorization": bad if bad.startswith("Basic") else f"Bearer {bad}"}).get(
            "/api/v1/networks"
        )
    await admin.delete(f"/api/v1/tokens/{created['token_id']}")
    await service.get("/api/v1/networks")  # revoked now: another audited failure

    audit_text = (await admin.get("/api/v1/admin/audit", params={"limit": 1000})).text
    ring_text = (await admin.get("/api/v1/admin/logs", params={"limit": 1000})).text
    assert "auth.failure" in audit_text and "token created" in ring_text
    file_text = node.log_path.read_text()  # the handler flushes every record
    assert created["token_id"] in file_text
    for secret in (node.admin_token, service_secret, unknown, typo):
        for where, text in (("audit", audit_text), ("log ring", ring_text), ("log file", file_text)):
            assert secret not in text, f"a secret reached the {where}"
            assert secret[4:20] not in text, f"part of a secret reached the {where}"
