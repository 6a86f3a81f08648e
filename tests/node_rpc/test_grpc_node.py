"""The official grpcio client against a running node: registry, health, auth, limits, deadlines,
scoping identical to REST, and devices on gRPC Connect and on the WebSocket relay talking both ways."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import trio

from node.auth import Role
from node.client import DeviceClient
from tests.node_rpc.conftest import ConnectSession, bearer, rpc_target
from tests.relay.conftest import StartRelay
from tests.relay.helpers import Device, RelayEnv
from tests.rpc.conftest import Client
from wire.device import (
    AckStatus,
    Delivered,
    Flags,
    FrameType,
    Register,
    Registered,
    decode_ack_untrusted,
    decode_control_untrusted,
    encode_control,
    encode_frame,
)

TIMEOUT_S = 10.0


async def admin_token(env: RelayEnv) -> str:
    secret, _ = await env.handle.tokens.create(name="admin", role=Role.ADMIN)
    return secret


async def open_connect(client: Client, dev: Device) -> ConnectSession:
    """A Connect session registered as `dev` (HELLO skipped: the call is authenticated)."""
    session = ConnectSession(client, dev.token)
    welcome = await session.receive()
    assert welcome.type == FrameType.WELCOME
    register = Register(dev.device_id, dev.network_id, "grpc device", "virtual", ("grpc.test",))
    session.send(encode_control(register, message_id=1, source=dev.device_id))
    answer = decode_control_untrusted(await session.receive_type(FrameType.REGISTERED))
    assert isinstance(answer, Registered)
    assert answer.device_id == dev.device_id
    return session


def data_frame(
    source: uuid.UUID, destination: uuid.UUID, payload: bytes, message_id: int, flags: int
) -> bytes:
    return encode_frame(
        FrameType.DIRECT,
        message_id=message_id,
        source=source,
        destination=destination,
        payload=payload,
        flags=flags,
    )


async def test_register_get_and_list_devices(env: RelayEnv, grpc_client: Client) -> None:
    pb = grpc_client.stubs.registry
    md = bearer(await admin_token(env))
    device_id = str(uuid.uuid4())
    request = pb.RegisterDeviceRequest(
        device_id=device_id,
        network_id=str(env.network_id),
        world_type="virtual",
        capabilities=["camera"],
        name="cam",
    )
    registered = await grpc_client.call(grpc_client.registry.RegisterDevice, request, metadata=md)
    assert registered.created
    assert registered.device.device_id == device_id
    again = await grpc_client.call(grpc_client.registry.RegisterDevice, request, metadata=md)
    assert not again.created
    got = await grpc_client.call(
        grpc_client.registry.GetDevice, pb.GetDeviceRequest(device_id=device_id), metadata=md
    )
    assert (got.name, list(got.capabilities), got.network_id) == ("cam", ["camera"], str(env.network_id))
    listed = await grpc_client.call(grpc_client.registry.ListDevices, pb.ListDevicesRequest(), metadata=md)
    assert [d.device_id for d in listed.devices] == [device_id]
    rest = env.handle.registry.get_device(_system(), device_id)
    assert rest.name == "cam"


def _system() -> object:
    from node.auth import SYSTEM

    return SYSTEM


async def test_health_reports_every_service_serving(env: RelayEnv, grpc_client: Client) -> None:
    pb = grpc_client.stubs.health
    for service in ("", "asgard.v1.Registry", "asgard.v1.Routing", "asgard.v1.LockService"):
        answer = await grpc_client.call(grpc_client.health.Check, pb.HealthCheckRequest(service=service))
        assert answer.status == pb.HealthCheckResponse.SERVING, service
    error = await grpc_client.error(
        grpc_client.health.Check, pb.HealthCheckRequest(service="no.such.Service")
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_missing_and_revoked_tokens_are_unauthenticated(
    start_relay: StartRelay, stubs: SimpleNamespace
) -> None:
    env = await start_relay(**{"rpc.auth_cache_ttl_s": 0})  # every call checks its token
    with grpc.insecure_channel(rpc_target(env)) as channel:
        client = Client(channel, stubs)
        request = stubs.registry.ListDevicesRequest()
        for metadata in (bearer("asg_" + "x" * 40), bearer("nonsense"), ()):
            error = await client.error(client.registry.ListDevices, request, metadata=metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        secret, row = await env.handle.tokens.create(name="short-lived", role=Role.SERVICE)
        await client.call(client.registry.ListDevices, request, metadata=bearer(secret))
        await env.handle.tokens.revoke(row.token_id)
        error = await client.error(client.registry.ListDevices, request, metadata=bearer(secret))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_message_over_the_limit_is_resource_exhausted(env: RelayEnv, grpc_client: Client) -> None:
    dev = await env.device()
    limit = env.handle.settings.rpc.max_message_bytes
    frame = data_frame(dev.device_id, uuid.uuid4(), b"x" * (limit + 1), 1, 0)
    request = grpc_client.stubs.routing.SendRequest(frame=frame)
    error = await grpc_client.error(grpc_client.routing.Send, request, metadata=bearer(dev.token))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The channel and the node are fine afterwards.
    small = grpc_client.stubs.registry.ListDevicesRequest()
    await grpc_client.call(grpc_client.registry.ListDevices, small, metadata=bearer(dev.token))


async def test_a_deadline_that_expires_ends_the_call(env: RelayEnv, grpc_client: Client) -> None:
    pb = grpc_client.stubs.registry
    md = bearer(await admin_token(env))
    watch = grpc_client.registry.WatchStatus(pb.WatchStatusRequest(), metadata=md, timeout=0.3)
    started = trio.current_time()
    with trio.fail_after(TIMEOUT_S):
        try:
            await trio.to_thread.run_sync(list, watch)
        except grpc.RpcError as exc:
            error = exc
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert trio.current_time() - started < 5.0
    # The watch ended on the node too: no call is left in the gate.
    rpc = env.handle.extra["rpc"]
    with trio.fail_after(TIMEOUT_S):
        while rpc.statistics().get("active_calls", 0):
            await trio.sleep(0.01)


async def test_device_token_scoping_is_the_same_as_rest(env: RelayEnv, grpc_client: Client) -> None:
    other = await env.network("other")
    mine, theirs = await env.device(), await env.device(other)
    for dev in (mine, theirs):
        client = await env.client(dev)
        await client.aclose()
    pb = grpc_client.stubs.registry
    md = bearer(mine.token)
    listed = await grpc_client.call(grpc_client.registry.ListDevices, pb.ListDevicesRequest(), metadata=md)
    grpc_ids = sorted(d.device_id for d in listed.devices)
    async with httpx.AsyncClient(base_url=env.handle.addresses["api"], timeout=TIMEOUT_S) as http:
        rest = await http.get("/api/v1/devices", headers={"Authorization": f"Bearer {mine.token}"})
        rest_ids = sorted(d["device_id"] for d in rest.json()["items"])
        rest_other = await http.get(
            f"/api/v1/devices/{theirs.device_id}", headers={"Authorization": f"Bearer {mine.token}"}
        )
    assert grpc_ids == rest_ids == [str(mine.device_id)]
    error = await grpc_client.error(
        grpc_client.registry.GetDevice, pb.GetDeviceRequest(device_id=str(theirs.device_id)), metadata=md
    )
    assert (error.code(), rest_other.status_code) == (grpc.StatusCode.NOT_FOUND, 404)
    by_network = pb.ListDevicesRequest(network_id=str(other))
    listed = await grpc_client.call(grpc_client.registry.ListDevices, by_network, metadata=md)
    assert list(listed.devices) == []


async def test_connect_and_websocket_devices_exchange_frames_both_ways(
    env: RelayEnv, grpc_client: Client
) -> None:
    ws_dev, grpc_dev = await env.device(), await env.device()
    ws = await env.client(ws_dev)
    session = await open_connect(grpc_client, grpc_dev)
    try:
        ack = await ws.send(grpc_dev.device_id, b"to grpc")
        assert ack is not None and ack.status == AckStatus.DELIVERED
        frame = await session.receive_type(FrameType.DIRECT)
        assert (frame.payload, frame.source_uuid) == (b"to grpc", ws_dev.device_id)
        session.send(data_frame(grpc_dev.device_id, ws_dev.device_id, b"to ws", 7, Flags.ACK_REQUESTED))
        ack_frame = await session.receive_type(FrameType.ACK)
        assert ack_frame.message_id == 7
        assert decode_ack_untrusted(ack_frame.payload).status == AckStatus.DELIVERED
        with trio.fail_after(TIMEOUT_S):
            message = await ws.receive()
        assert (message.payload, message.source) == (b"to ws", grpc_dev.device_id)
        # Unary Send routes through the same router (as the caller's own device).
        request = grpc_client.stubs.routing.SendRequest(
            frame=data_frame(grpc_dev.device_id, ws_dev.device_id, b"unary", 8, 0)
        )
        sent = await grpc_client.call(grpc_client.routing.Send, request, metadata=bearer(grpc_dev.token))
        assert (sent.message_id, sent.recipients) == (8, 1)
        with trio.fail_after(TIMEOUT_S):
            assert (await ws.receive()).payload == b"unary"
    finally:
        assert await session.end() is None  # a half-close ends the session normally (1000 -> OK)


async def test_unary_send_to_a_connect_session_arrives_in_order_direct_and_durable(
    env: RelayEnv, grpc_client: Client
) -> None:
    sender, receiver = await env.device(), await env.device()
    await (await env.client(sender)).aclose()  # registered; Send speaks for it
    session = await open_connect(grpc_client, receiver)
    stubs = grpc_client.stubs.routing
    try:
        for i, flags in enumerate((0, Flags.DURABLE, 0, Flags.DURABLE)):
            frame = data_frame(sender.device_id, receiver.device_id, b"n%d" % i, 20 + i, flags)
            sent = await grpc_client.call(
                grpc_client.routing.Send, stubs.SendRequest(frame=frame), metadata=bearer(sender.token)
            )
            assert (sent.message_id, sent.status, sent.recipients) == (
                20 + i,
                stubs.DELIVERY_STATUS_DELIVERED,
                1,
            )
        got = [await session.receive_type(FrameType.DIRECT) for _ in range(4)]
        assert [(f.message_id, bytes(f.payload)) for f in got] == [(20 + i, b"n%d" % i) for i in range(4)]
    finally:
        assert await session.end() is None


async def test_durable_frames_reach_an_offline_connect_device_on_reconnect(
    env: RelayEnv, grpc_client: Client
) -> None:
    ws_dev, grpc_dev = await env.device(), await env.device()
    first = await open_connect(grpc_client, grpc_dev)  # known to the node, then offline
    assert await first.end() is None
    ws = await env.client(ws_dev)
    ack = await ws.send(grpc_dev.device_id, b"kept for you", durable=True)
    assert ack is not None and ack.status == AckStatus.QUEUED
    session = await open_connect(grpc_client, grpc_dev)
    try:
        frame = await session.receive_type(FrameType.DIRECT)
        assert frame.payload == b"kept for you"
        assert frame.flags & Flags.DURABLE
        delivered = encode_control(
            Delivered(), message_id=frame.message_id, source=grpc_dev.device_id, destination=frame.source
        )
        session.send(delivered)
        with trio.fail_after(TIMEOUT_S):
            while env.relay.queue.depth(str(grpc_dev.device_id)).messages:
                await trio.sleep(0.01)
    finally:
        assert await session.end() is None


async def test_durable_frames_from_connect_reach_an_offline_websocket_device(
    env: RelayEnv, grpc_client: Client
) -> None:
    ws_dev, grpc_dev = await env.device(), await env.device()
    first = await env.client(ws_dev)
    await first.aclose()
    session = await open_connect(grpc_client, grpc_dev)
    try:
        frame = data_frame(
            grpc_dev.device_id,
            ws_dev.device_id,
            b"while you were out",
            9,
            Flags.ACK_REQUESTED | Flags.DURABLE,
        )
        session.send(frame)
        ack_frame = await session.receive_type(FrameType.ACK)
        assert decode_ack_untrusted(ack_frame.payload).status == AckStatus.QUEUED
    finally:
        assert await session.end() is None
    ws: DeviceClient = await env.client(ws_dev)
    with trio.fail_after(TIMEOUT_S):
        message = await ws.receive()
    assert (message.payload, message.source, message.durable) == (
        b"while you were out",
        grpc_dev.device_id,
        True,
    )


async def test_a_connect_session_replaced_by_a_websocket_session_ends_aborted(
    env: RelayEnv, grpc_client: Client, stubs: SimpleNamespace
) -> None:
    dev = await env.device()
    session = await open_connect(grpc_client, dev)
    ws = await env.client(dev)  # the same device registers on the relay: the older session goes
    error = await session.end()
    assert error is not None and error.code() == grpc.StatusCode.ABORTED
    await ws.aclose()


async def test_capabilities_name_the_services_and_count_the_devices_in_scope(
    env: RelayEnv, grpc_client: Client
) -> None:
    pb = grpc_client.stubs.capabilities
    other = await env.network("other")
    mine, theirs = await env.device(), await env.device(other)
    watch = grpc_client.capabilities.WatchCapabilities(
        pb.WatchCapabilitiesRequest(), metadata=bearer(mine.token), timeout=30
    )
    try:
        first = await _next_snapshot(watch)
        assert first.node_id == env.handle.node_id
        services = {s.name: pb.ServiceState.Name(s.state) for s in first.services}
        assert {n: services[n] for n in ("api", "registry", "relay", "rpc", "locks")} == dict.fromkeys(
            ("api", "registry", "relay", "rpc", "locks"), "SERVICE_STATE_RUNNING"
        )
        assert {"rest", "routing", "grpc", "locks"} <= {c.name for c in first.capabilities if c.local}
        ws = await env.client(mine, capabilities=("speaker",))
        await env.client(theirs, capabilities=("camera",))
        with trio.fail_after(TIMEOUT_S):
            while True:  # coalesced updates: wait for the one that shows the speaker
                snap = await _next_snapshot(watch)
                counts = {c.name: (c.online_devices, c.devices) for c in snap.capabilities if not c.local}
                if "speaker" in counts:
                    break
        assert snap.revision > first.revision
        assert counts == {"speaker": (1, 1)}  # the other network's camera is out of scope
        got = await grpc_client.call(
            grpc_client.capabilities.GetCapabilities, pb.GetCapabilitiesRequest(), metadata=bearer(mine.token)
        )
        assert {c.name for c in got.capabilities if not c.local} == {"speaker"}
        await ws.aclose()
    finally:
        watch.cancel()


async def _next_snapshot(watch: object) -> object:
    with trio.fail_after(TIMEOUT_S):
        return await trio.to_thread.run_sync(next, watch, abandon_on_cancel=True)


async def test_a_node_without_the_relay_reports_routing_not_serving(
    start_relay: StartRelay, stubs: SimpleNamespace
) -> None:
    env = await start_relay(**{"relay.enabled": False})
    with grpc.insecure_channel(rpc_target(env)) as channel:
        client = Client(channel, stubs)
        pb = stubs.health
        routing = await client.call(client.health.Check, pb.HealthCheckRequest(service="asgard.v1.Routing"))
        registry = await client.call(client.health.Check, pb.HealthCheckRequest(service="asgard.v1.Registry"))
        assert (routing.status, registry.status) == (
            pb.HealthCheckResponse.NOT_SERVING,
            pb.HealthCheckResponse.SERVING,
        )
        dev = await env.device()
        session = ConnectSession(client, dev.token)
        error = await session.end()
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE


async def test_send_refusals_map_to_statuses(env: RelayEnv, grpc_client: Client) -> None:
    mine, other = await env.device(), await env.device()
    await (await env.client(other)).aclose()  # registered, now offline
    routing = grpc_client.stubs.routing
    cases = [
        (
            mine.token,
            data_frame(other.device_id, mine.device_id, b"x", 1, 0),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (mine.token, data_frame(mine.device_id, uuid.uuid4(), b"x", 2, 0), grpc.StatusCode.NOT_FOUND),
        (mine.token, data_frame(mine.device_id, other.device_id, b"x", 3, 0), grpc.StatusCode.NOT_FOUND),
        (mine.token, b"\x01\x10 too short", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    await (await env.client(mine)).aclose()  # the sender must be a registered device
    for token, frame, code in cases:
        error = await grpc_client.error(
            grpc_client.routing.Send, routing.SendRequest(frame=frame), metadata=bearer(token)
        )
        assert error.code() == code, (frame[:16], error.details())
    durable = data_frame(mine.device_id, other.device_id, b"later", 4, Flags.DURABLE)
    sent = await grpc_client.call(
        grpc_client.routing.Send, routing.SendRequest(frame=durable), metadata=bearer(mine.token)
    )
    assert sent.status == routing.DELIVERY_STATUS_QUEUED


async def test_a_half_close_still_delivers_what_the_node_has_queued(
    env: RelayEnv, grpc_client: Client
) -> None:
    dev = await env.device()
    count = 1000
    register = Register(dev.device_id, dev.network_id, "g", "virtual")
    frames = [encode_control(register, message_id=1, source=dev.device_id)]
    echo = b"e" * 8192  # 1000 of them: more than the HTTP/2 windows hold
    frames += [data_frame(dev.device_id, dev.device_id, echo, 2 + i, 0) for i in range(count)]
    pb = grpc_client.stubs.routing

    sent_all = threading.Event()

    def requests() -> Iterator[Any]:  # ends after the last frame: grpcio half-closes the call
        yield from (pb.ConnectFrame(frame=f) for f in frames)
        sent_all.set()

    def run() -> list[int]:
        call = grpc_client.routing.Connect(requests(), metadata=bearer(dev.token), timeout=TIMEOUT_S)
        # Read nothing until everything is sent, so the echoes pile up on the node (flow control)
        # and are still waiting there when the half-close arrives.
        assert sent_all.wait(TIMEOUT_S)
        return [message.frame[1] for message in call]

    with trio.fail_after(TIMEOUT_S + 5):
        types = await trio.to_thread.run_sync(run)
    assert types.count(FrameType.DIRECT) == count  # routed back to the session, none lost at the end
