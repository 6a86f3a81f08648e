"""TURN inside the node: REST credentials for a device used by coturn's real client, store-backed
users managed over REST, the `asgard stun-probe` command against the node, and stats."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from node.app import NodeHandle, ephemeral_overrides, run_node
from node.auth import Role
from node.config import load_settings

pytestmark = [pytest.mark.external]


@asynccontextmanager
async def node(tmp_path: Path) -> AsyncIterator[NodeHandle]:
    settings = load_settings(None, environ={}, overrides=ephemeral_overrides(tmp_path)).settings
    async with trio.open_nursery() as nursery:
        handle: NodeHandle = await nursery.start(
            lambda task_status: run_node(settings, handle_signals=False, task_status=task_status)
        )
        try:
            yield handle
        finally:
            handle.stop()


def api(handle: NodeHandle, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=handle.addresses["api"], headers={"Authorization": f"Bearer {token}"})


async def uclient(path: str, turn: str, peer: tuple[str, int], user: str, password: str) -> tuple[int, str]:
    host, port = turn.rsplit(":", 1)
    command = [
        path,
        "-u",
        user,
        "-w",
        password,
        "-p",
        port,
        "-e",
        peer[0],
        "-r",
        str(peer[1]),
        "-X",
        "-g",
        "-c",
        "-m",
        "2",
        "-n",
        "50",
        "-l",
        "100",
        "-z",
        "2",
        host,
    ]
    with trio.fail_after(60):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def lost_packets(output: str) -> int:
    line = next(x for x in output.splitlines() if "Total lost packets" in x)
    return int(line.split("Total lost packets")[1].split()[0])


async def test_device_credential_from_rest_relays_with_a_real_client(
    tmp_path: Path, require_program: Callable[[str], str], turnutils_peer: tuple[str, int]
) -> None:
    path = require_program("turnutils_uclient")
    async with node(tmp_path) as handle:
        device_id = str(uuid.uuid4())
        secret, _ = await handle.tokens.create(
            name="cam", role=Role.DEVICE, device_id=device_id, networks=[str(uuid.uuid4())]
        )
        async with api(handle, secret) as http:
            response = await http.post("/api/v1/turn/credentials", json={"ttl_s": 600})
        assert response.status_code == 200, response.text
        cred = response.json()
        expiry, user = cred["username"].split(":")
        assert user == device_id
        assert int(expiry) == cred["expires_at"]
        assert f"turn:{handle.addresses['turn']}?transport=udp" in cred["uris"]
        rc, output = await uclient(
            path, handle.addresses["turn"], turnutils_peer, cred["username"], cred["password"]
        )
        assert rc == 0, output[-2000:]
        assert lost_packets(output) == 0
        relayed = handle.api.stats_providers["turn"]()["relayed"]
        assert sum(relayed.values()) >= 2 * 50, relayed


async def test_store_users_are_managed_over_rest_and_used_by_turn(
    tmp_path: Path, require_program: Callable[[str], str], turnutils_peer: tuple[str, int]
) -> None:
    path = require_program("turnutils_uclient")
    async with node(tmp_path) as handle:
        assert handle.admin_token
        async with api(handle, handle.admin_token) as http:
            short = await http.put("/api/v1/turn/users/alice", json={"password": "short"})
            assert short.status_code == 400
            created = await http.put("/api/v1/turn/users/alice", json={"password": "correct horse battery"})
            assert created.status_code == 200, created.text
            assert [u["username"] for u in (await http.get("/api/v1/turn/users")).json()["items"]] == [
                "alice"
            ]
            rc, output = await uclient(
                path, handle.addresses["turn"], turnutils_peer, "alice", "correct horse battery"
            )
            assert rc == 0, output[-2000:]
            assert lost_packets(output) == 0
            rc, output = await uclient(
                path, handle.addresses["turn"], turnutils_peer, "alice", "wrong password here"
            )
            assert rc != 0 or "error" in output.lower()
            assert (await http.delete("/api/v1/turn/users/alice")).status_code == 204
            assert (await http.delete("/api/v1/turn/users/alice")).status_code == 404
            rc, output = await uclient(
                path, handle.addresses["turn"], turnutils_peer, "alice", "correct horse battery"
            )
            assert rc != 0 or "error" in output.lower()


async def test_turn_users_and_credentials_need_the_right_role(tmp_path: Path) -> None:
    async with node(tmp_path) as handle:
        viewer, _ = await handle.tokens.create(name="v", role=Role.VIEWER)
        async with api(handle, viewer) as http:
            assert (await http.post("/api/v1/turn/credentials", json={})).status_code == 403
            assert (await http.get("/api/v1/turn/users")).status_code == 403


async def test_stun_probe_command_against_the_node(tmp_path: Path) -> None:
    async with node(tmp_path) as handle:
        command = [
            sys.executable,
            "-m",
            "node",
            "stun-probe",
            "--json",
            "--timeout",
            "2",
            handle.addresses["turn"],
        ]
        with trio.fail_after(30):
            done = await trio.run_process(command, capture_stdout=True, check=False)
        assert done.returncode == 0, done.stdout
        report = json.loads(done.stdout)
        assert report["ok"] is True
        assert report["public_address"][0] == "127.0.0.1"
