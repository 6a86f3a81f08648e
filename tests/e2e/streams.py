"""Concurrent POST /api/v1/devices streams against a node process, recording what was acknowledged."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import httpx
import trio

REQUEST_TIMEOUT_S = 10.0


@dataclass
class DeviceStream:
    """Shared by the writers: ids acknowledged with 201, in order, and what else happened."""

    url: str
    token: str
    network_id: str
    acked: list[str] = field(default_factory=list)
    unanswered: int = 0  # requests that got no answer (the node died under them)
    unexpected: list[tuple[int, str]] = field(default_factory=list)
    reached: trio.Event = field(default_factory=trio.Event)
    target: int = 0
    stop: bool = False

    async def write(self) -> None:
        """Register new devices one after another until stopped or the node stops answering."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
            while not self.stop:
                device_id = str(uuid.uuid4())
                body = {"device_id": device_id, "network_id": self.network_id, "world_type": "virtual"}
                try:
                    r = await client.post("/api/v1/devices", json=body)
                except httpx.TransportError:
                    self.unanswered += 1
                    return
                if r.status_code != 201:
                    self.unexpected.append((r.status_code, r.text[:200]))
                    return
                self.acked.append(device_id)
                if self.target and len(self.acked) >= self.target:
                    self.reached.set()


async def create_network(url: str, token: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        r = await client.post(
            "/api/v1/networks", json={"name": "stream"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 201, r.text
        return str(r.json()["network_id"])


async def stored_device_ids(url: str, token: str) -> set[str]:
    """Every device the node lists (walking all pages)."""
    found: set[str] = set()
    params: dict[str, str | int] = {"limit": 500}
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        while True:
            r = await client.get(
                "/api/v1/devices", params=params, headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200, r.text
            found |= {d["device_id"] for d in r.json()["items"]}
            if r.json()["next_cursor"] is None:
                return found
            params["cursor"] = r.json()["next_cursor"]
