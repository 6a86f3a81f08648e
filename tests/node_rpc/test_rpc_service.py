"""The gRPC router as a node service: live settings from a config file, statistics in the admin
stats, and health going NOT_SERVING as soon as the node starts stopping."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import trio

from node.app import NodeHandle, ephemeral_overrides, run_node
from node.auth import Role
from node.config import load_settings
from tests.node_rpc.conftest import bearer, rpc_target
from tests.relay.helpers import RelayEnv
from tests.rpc.conftest import Client
from wire.device import FrameType, encode_frame

TIMEOUT_S = 10.0
BASE = "[server]\nconfig_poll_interval_s = 0.02\n[logging]\nconsole = false\n"


def send_request(client: Client, size: int) -> Any:
    me = uuid.uuid4()
    frame = encode_frame(FrameType.DIRECT, message_id=1, source=me, destination=me, payload=b"x" * size)
    return client.stubs.routing.SendRequest(frame=frame)


async def test_a_live_config_change_reaches_the_router(tmp_path: Path, stubs: SimpleNamespace) -> None:
    path = tmp_path / "asgard.toml"
    path.write_text(BASE)
    overrides = ephemeral_overrides(tmp_path / "data")
    settings = load_settings(path, environ={}, overrides=overrides).settings
    checks_send, checks = trio.open_memory_channel[tuple[bool, str | None]](10)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle: NodeHandle = await nursery.start(
                lambda task_status: run_node(
                    settings,
                    config_path=path,
                    handle_signals=False,
                    overrides=overrides,
                    task_status=task_status,
                )
            )
            handle.extra["config_watcher"].observers.append(
                lambda ok, err: checks_send.send_nowait((ok, err))
            )
            token = handle.admin_token
            assert token is not None
            with grpc.insecure_channel(handle.addresses["rpc"]) as channel:
                client = Client(channel, stubs)
                # 4 KiB passes the default limit (4 MiB): refused for its unknown source, not its size
                error = await client.error(
                    client.routing.Send, send_request(client, 4096), metadata=bearer(token)
                )
                assert error.code() == grpc.StatusCode.NOT_FOUND
                path.write_text(BASE + "[rpc]\nmax_message_bytes = 2048\n")
                assert await checks.receive() == (True, None)
                error = await client.error(
                    client.routing.Send, send_request(client, 4096), metadata=bearer(token)
                )
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert handle.extra["rpc"].settings.max_message_bytes == 2048
            handle.stop()


async def test_router_statistics_are_in_the_admin_stats(env: RelayEnv, grpc_client: Client) -> None:
    token, _ = await env.handle.tokens.create(name="admin", role=Role.ADMIN)
    await grpc_client.call(
        grpc_client.registry.ListDevices,
        grpc_client.stubs.registry.ListDevicesRequest(),
        metadata=bearer(token),
    )
    async with httpx.AsyncClient(base_url=env.handle.addresses["api"], timeout=TIMEOUT_S) as http:
        stats = await http.get("/api/v1/admin/stats", headers={"Authorization": f"Bearer {token}"})
    rpc = stats.json()["services"]["rpc"]
    assert rpc["health"][""] == "serving"
    assert rpc["health"]["asgard.v1.LockService"] == "serving"
    assert "in_flight" in rpc


async def test_health_goes_not_serving_when_the_node_stops(env: RelayEnv, stubs: SimpleNamespace) -> None:
    pb = stubs.health
    with grpc.insecure_channel(rpc_target(env)) as channel:
        client = Client(channel, stubs)
        watch = client.health.Watch(pb.HealthCheckRequest(service="asgard.v1.Routing"), timeout=30)
        statuses: list[int] = []
        with trio.fail_after(TIMEOUT_S):
            statuses.append((await trio.to_thread.run_sync(next, watch, abandon_on_cancel=True)).status)
            env.handle.stop()
            try:
                while True:
                    statuses.append(
                        (await trio.to_thread.run_sync(next, watch, abandon_on_cancel=True)).status
                    )
            except grpc.RpcError as exc:
                ended = exc.code()
    assert statuses == [pb.HealthCheckResponse.SERVING, pb.HealthCheckResponse.NOT_SERVING]
    assert ended == grpc.StatusCode.UNAVAILABLE
