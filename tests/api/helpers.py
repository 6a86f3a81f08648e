"""Helpers of the API tests: a running node with its clients, request bodies and assertions."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from node.app import NodeHandle

REQUEST_TIMEOUT_S = 10.0
LOG_FILE = "node.log"


@dataclass
class LiveNode:
    """A running node and the clients opened on it."""

    handle: NodeHandle
    data_dir: Path
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.handle.addresses["api"]

    @property
    def admin_token(self) -> str:
        assert self.handle.admin_token is not None
        return self.handle.admin_token

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """A keep-alive client; with `token`, every request carries it as a bearer token."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers |= kwargs.pop("headers", {})
        c = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=REQUEST_TIMEOUT_S, **kwargs)
        self.clients.append(c)
        return c

    def admin(self) -> httpx.AsyncClient:
        return self.client(self.admin_token)

    async def token(
        self,
        role: str,
        *,
        device_id: str | None = None,
        networks: tuple[str, ...] = (),
        expires_in_s: int | None = None,
    ) -> tuple[str, str]:
        """Create a token through the API as admin; returns (secret, token_id)."""
        body: dict[str, Any] = {"name": f"test {role}", "role": role, "networks": list(networks)}
        if device_id:
            body["device_id"] = device_id
        if expires_in_s:
            body["expires_in_s"] = expires_in_s
        r = await self.admin().post("/api/v1/tokens", json=body)
        assert r.status_code == 201, r.text
        return r.json()["token"], r.json()["token_id"]

    async def aclose(self) -> None:
        # Idle keep-alive connections would hold hypercorn's drain for the whole grace period.
        for c in self.clients:
            await c.aclose()
        self.handle.stop()


StartNode = Callable[..., Awaitable[LiveNode]]


def new_id() -> str:
    return str(uuid.uuid4())


async def create_network(client: httpx.AsyncClient, name: str = "home") -> str:
    r = await client.post("/api/v1/networks", json={"name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["network_id"])


def device_body(network_id: str, device_id: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "device_id": device_id or new_id(),
        "network_id": network_id,
        "world_type": "physical",
        "name": "lamp",
        "capabilities": ["light.on_off"],
        "hardware_spec": {"cpu": "arm"},
    }
    return body | fields


async def register(client: httpx.AsyncClient, network_id: str, **fields: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/devices", json=device_body(network_id, **fields))
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def assert_problem(
    r: httpx.Response, status: int, *, code: str | None = None, detail: str | None = None
) -> None:
    """An RFC 9457 problem with this status (and `type` slug / `detail` substring when given)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:asgard:problem:")
    if code is not None:
        assert body["type"] == f"urn:asgard:problem:{code}", body
    if detail is not None:
        assert detail in body["detail"], body
