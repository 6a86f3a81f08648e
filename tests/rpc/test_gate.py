"""What every call passes through: authentication, the size limit, deadlines, the in-flight bound."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import trio

from node.rpc import RpcSettings
from node.rpc.testing import MemoryBackend, StaticAuthenticator
from tests.rpc.conftest import ADMIN_MD, DEVICE, NET_A, Client, Running


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer asg_wrong"),),
        (("authorization", "Basic YWRtaW46YWRtaW4="),),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer asg_admin"), ("authorization", "Bearer asg_admin")),
    ],
    ids=["missing", "unknown-token", "other-scheme", "empty-token", "twice"],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    client: Client, backend: MemoryBackend, metadata: tuple[tuple[str, str], ...]
) -> None:
    r = client.stubs.registry
    error = await client.error(client.registry.ListDevices, r.ListDevicesRequest(), metadata=metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert backend.devices == {}


async def test_the_token_is_checked_before_the_handler_runs(client: Client, backend: MemoryBackend) -> None:
    r = client.stubs.registry
    request = r.RegisterDeviceRequest(network_id=NET_A, world_type="physical")
    error = await client.error(client.registry.RegisterDevice, request, metadata=())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert backend.devices == {}  # nothing was registered
    await client.call(client.registry.RegisterDevice, request, metadata=ADMIN_MD)
    assert len(backend.devices) == 1


async def test_validated_tokens_are_cached_on_the_island(
    client: Client, authenticator: StaticAuthenticator
) -> None:
    r = client.stubs.registry
    for _ in range(5):
        await client.call(client.registry.ListDevices, r.ListDevicesRequest(), metadata=ADMIN_MD)
    assert authenticator.calls == 1


@pytest.mark.parametrize(
    "rpc_settings", [RpcSettings(host="127.0.0.1", port=0, auth_cache_ttl_s=0)], ids=["no-cache"]
)
async def test_without_cache_every_call_checks_the_token(
    client: Client, authenticator: StaticAuthenticator
) -> None:
    r = client.stubs.registry
    for _ in range(3):
        await client.call(client.registry.ListDevices, r.ListDevicesRequest(), metadata=ADMIN_MD)
    assert authenticator.calls == 3


@pytest.mark.parametrize(
    "rpc_settings", [RpcSettings(host="127.0.0.1", port=0, max_message_bytes=2048)], ids=["2KiB"]
)
async def test_oversize_message_is_refused_before_decoding(
    client: Client, backend: MemoryBackend, authenticator: StaticAuthenticator
) -> None:
    r = client.stubs.registry
    big = r.RegisterDeviceRequest(
        network_id=NET_A, world_type="physical", hardware_spec_json='{"blob": "%s"}' % ("x" * 4000)
    )
    error = await client.error(client.registry.RegisterDevice, big, metadata=ADMIN_MD)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than the limit of 2048 bytes" in error.details()
    assert backend.devices == {}
    # A message at the limit still passes, on the same channel.
    fits = r.RegisterDeviceRequest(
        network_id=NET_A, world_type="physical", hardware_spec_json='{"blob": "%s"}' % ("x" * 1900)
    )
    assert len(fits.SerializeToString()) <= 2048
    await client.call(client.registry.RegisterDevice, fits, metadata=ADMIN_MD)
    assert len(backend.devices) == 1


@pytest.mark.parametrize(
    "rpc_settings", [RpcSettings(host="127.0.0.1", port=0, max_message_bytes=1024)], ids=["1KiB"]
)
async def test_oversize_frame_ends_a_connect_stream(client: Client) -> None:
    ro = client.stubs.routing
    frames = [b"a" * 100, b"b" * 100, b"c" * 5000, b"d" * 100]

    def run() -> tuple[list[bytes], grpc.RpcError | None]:
        replies = client.routing.Connect(
            iter(ro.ConnectFrame(frame=f) for f in frames), metadata=ADMIN_MD, timeout=10
        )
        received = []
        try:
            for reply in replies:
                received.append(reply.frame)
        except grpc.RpcError as exc:
            return received, exc
        return received, None

    received, error = await client.call(run)
    assert error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert b"d" * 100 not in received  # nothing after the oversize frame was routed


async def test_a_deadline_that_expires_cancels_the_node_side(client: Client, backend: MemoryBackend) -> None:
    backend.delay_s = 30.0
    r = client.stubs.registry
    error = await client.error(
        client.registry.GetDevice, r.GetDeviceRequest(device_id=DEVICE), metadata=ADMIN_MD, timeout=0.3
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with trio.fail_after(5):
        await backend.call_cancelled.wait()
    assert backend.cancelled_calls == 1


@pytest.mark.parametrize(
    "rpc_settings",
    [RpcSettings(host="127.0.0.1", port=0, default_call_timeout_s=0.2)],
    ids=["default-deadline"],
)
async def test_calls_without_a_deadline_get_the_default_one(client: Client, backend: MemoryBackend) -> None:
    backend.delay_s = 30.0
    r = client.stubs.registry
    error = await client.error(
        client.registry.GetDevice, r.GetDeviceRequest(device_id=DEVICE), metadata=ADMIN_MD, timeout=None
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert backend.call_cancelled.is_set()


@pytest.mark.parametrize(
    "rpc_settings", [RpcSettings(host="127.0.0.1", port=0, max_in_flight=2)], ids=["two-in-flight"]
)
async def test_a_full_bridge_answers_resource_exhausted(
    client: Client, backend: MemoryBackend, rpc: Running
) -> None:
    r = client.stubs.registry
    # Authenticate once so the cached token does not use a bridge slot.
    await client.call(client.registry.ListDevices, r.ListDevicesRequest(), metadata=ADMIN_MD)
    backend.delay_s = 30.0
    slow = [
        client.registry.GetDevice.future(r.GetDeviceRequest(device_id=DEVICE), metadata=ADMIN_MD, timeout=10)
        for _ in range(2)
    ]
    try:
        with trio.fail_after(5):
            await backend.wait_until_waiting(2)
        error = await client.error(
            client.registry.GetDevice, r.GetDeviceRequest(device_id=DEVICE), metadata=ADMIN_MD
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "in flight" in error.details()
    finally:
        for future in slow:
            future.cancel()
    backend.delay_s = 0
    with trio.fail_after(5):
        await backend.wait_until_waiting(0)
    island = rpc.server.island
    assert island is not None
    await island.run(asyncio.sleep, 0)  # the island has taken the two calls' ends
    assert rpc.server.statistics()["in_flight"] == 0
    await client.call(client.registry.ListDevices, r.ListDevicesRequest(), metadata=ADMIN_MD)


async def test_live_settings_change_the_limit(client: Client, rpc: Running) -> None:
    r = client.stubs.registry
    request = r.RegisterDeviceRequest(
        network_id=NET_A, world_type="physical", hardware_spec_json='{"blob": "%s"}' % ("x" * 3000)
    )
    await client.call(client.registry.RegisterDevice, request, metadata=ADMIN_MD)
    rpc.server.apply_settings(RpcSettings(host="127.0.0.1", port=0, max_message_bytes=2048))
    island = rpc.server.island
    assert island is not None
    await island.run(asyncio.sleep, 0)  # jobs are handed over in order: the settings arrived
    error = await client.error(client.registry.RegisterDevice, request, metadata=ADMIN_MD)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def test_every_node_error_maps_to_its_own_status() -> None:
    from grpclib.const import Status

    from node.errors import NodeError, NotFound
    from node.rpc._gate import grpc_error

    for cls in _subclasses(NodeError):
        error = grpc_error(cls("detail"))
        assert error.status == Status[cls.grpc_status], cls
        assert error.message == "detail"
    nested = ExceptionGroup("outer", [ExceptionGroup("nursery", [NotFound("no such device")])])
    assert grpc_error(nested).status == Status.NOT_FOUND  # Trio nurseries wrap single errors
    grouped = grpc_error(ExceptionGroup("nursery", [NotImplementedError("x")]))
    assert grouped.status == Status.INTERNAL
    assert grouped.message == "internal error"  # no internals leak to the client
