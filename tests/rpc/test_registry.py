"""Registry, capabilities, routing and lock calls through the official grpcio client."""

from __future__ import annotations

import json

import grpc
import trio

from node.rpc import model
from node.rpc.testing import MemoryBackend
from tests.rpc.conftest import ADMIN_MD, DEVICE, NET_A, NET_B, Client


async def _register(client: Client, network: str, caps: list[str], device_id: str = "") -> object:
    r = client.stubs.registry
    request = r.RegisterDeviceRequest(
        device_id=device_id,
        network_id=network,
        world_type="physical",
        capabilities=caps,
        hardware_spec_json=json.dumps({"ram_mb": 512, "serial": 2**60 + 1}),
        name="kitchen speaker",
    )
    return await client.call(client.registry.RegisterDevice, request, metadata=ADMIN_MD)


async def test_register_then_get_round_trips_every_field(client: Client) -> None:
    created = await _register(client, NET_A, ["audio.play", "audio.record"], DEVICE)
    assert created.created
    device = created.device
    assert device.device_id == DEVICE
    assert device.network_id == NET_A
    assert list(device.capabilities) == ["audio.play", "audio.record"]
    assert list(device.networks) == [NET_A]
    assert device.status == client.stubs.registry.DEVICE_STATUS_ONLINE
    # 64-bit integers survive: the reason hardware_spec travels as JSON text.
    assert json.loads(device.hardware_spec_json) == {"ram_mb": 512, "serial": 2**60 + 1}
    assert device.registered_at.seconds > 1_700_000_000
    got = await client.call(
        client.registry.GetDevice,
        client.stubs.registry.GetDeviceRequest(device_id=DEVICE.upper()),
        metadata=ADMIN_MD,
    )
    assert got == device
    again = await _register(client, NET_A, ["audio.play"], DEVICE)
    assert not again.created


async def test_list_filters_and_pages(client: Client) -> None:
    for _ in range(3):
        await _register(client, NET_A, ["audio.play"])
    await _register(client, NET_B, ["camera.snapshot"])
    r = client.stubs.registry
    first = await client.call(
        client.registry.ListDevices,
        r.ListDevicesRequest(network_id=NET_A, page_size=2),
        metadata=ADMIN_MD,
    )
    assert len(first.devices) == 2
    assert first.next_page_token
    second = await client.call(
        client.registry.ListDevices,
        r.ListDevicesRequest(network_id=NET_A, page_size=2, page_token=first.next_page_token),
        metadata=ADMIN_MD,
    )
    assert len(second.devices) == 1
    assert second.next_page_token == ""
    ids = [d.device_id for d in [*first.devices, *second.devices]]
    assert ids == sorted(ids)
    assert all(d.network_id == NET_A for d in [*first.devices, *second.devices])
    by_cap = await client.call(
        client.registry.ListDevices, r.ListDevicesRequest(capability="camera.snapshot"), metadata=ADMIN_MD
    )
    assert [d.network_id for d in by_cap.devices] == [NET_B]
    online = await client.call(
        client.registry.ListDevices,
        r.ListDevicesRequest(status=r.DEVICE_STATUS_OFFLINE),
        metadata=ADMIN_MD,
    )
    assert list(online.devices) == []


async def test_update_heartbeat_discover_unregister(client: Client, backend: MemoryBackend) -> None:
    r = client.stubs.registry
    await _register(client, NET_A, ["audio.play"], DEVICE)
    updated = await client.call(
        client.registry.UpdateDevice,
        r.UpdateDeviceRequest(
            device_id=DEVICE,
            capabilities=r.StringList(values=["light.dim"]),
            networks=r.StringList(values=[NET_A, NET_B]),
            name="lamp",
        ),
        metadata=ADMIN_MD,
    )
    assert list(updated.capabilities) == ["light.dim"]
    assert updated.name == "lamp"
    assert updated.world_type == "physical"  # absent fields stay unchanged
    assert backend.devices[DEVICE].networks == (NET_A, NET_B)
    beat = await client.call(
        client.registry.Heartbeat, r.HeartbeatRequest(device_id=DEVICE), metadata=ADMIN_MD
    )
    assert beat.status == r.DEVICE_STATUS_ONLINE
    assert beat.next_heartbeat_ms == 30_000
    found = await client.call(
        client.registry.Discover,
        r.DiscoverRequest(capabilities=["light.dim"], network_id=NET_B),
        metadata=ADMIN_MD,
    )
    assert [d.device_id for d in found.devices] == [DEVICE]
    removed = await client.call(
        client.registry.UnregisterDevice, r.UnregisterDeviceRequest(device_id=DEVICE), metadata=ADMIN_MD
    )
    assert removed.removed
    assert DEVICE not in backend.devices


async def test_node_errors_map_to_statuses_with_their_code(client: Client) -> None:
    r = client.stubs.registry
    missing = await client.error(
        client.registry.GetDevice, r.GetDeviceRequest(device_id=DEVICE), metadata=ADMIN_MD
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert ("asgard-error-code", "not-found") in missing.trailing_metadata()
    await _register(client, NET_A, [], DEVICE)
    conflict = await client.error(
        client.registry.RegisterDevice,
        r.RegisterDeviceRequest(device_id=DEVICE, network_id=NET_B, world_type="physical"),
        metadata=ADMIN_MD,
    )
    assert conflict.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "another network" in conflict.details()


async def test_wire_level_input_errors_are_invalid_argument(client: Client) -> None:
    r = client.stubs.registry
    cases = [
        (client.registry.GetDevice, r.GetDeviceRequest(device_id="not-a-uuid")),
        (client.registry.RegisterDevice, r.RegisterDeviceRequest(network_id=NET_A, hardware_spec_json="[1]")),
        (client.registry.RegisterDevice, r.RegisterDeviceRequest(network_id=NET_A, hardware_spec_json="{")),
        (client.registry.Discover, r.DiscoverRequest()),
    ]
    for method, request in cases:
        error = await client.error(method, request, metadata=ADMIN_MD)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert ("asgard-error-code", "invalid-input") in error.trailing_metadata()


async def test_watch_status_streams_changes(client: Client) -> None:
    r = client.stubs.registry
    await _register(client, NET_A, [], DEVICE)
    events = client.registry.WatchStatus(
        r.WatchStatusRequest(network_id=NET_A, send_initial=True), metadata=ADMIN_MD, timeout=10
    )
    try:
        initial = await client.call(next, events)
        assert (initial.device_id, initial.status, initial.previous) == (
            DEVICE,
            r.DEVICE_STATUS_ONLINE,
            r.DEVICE_STATUS_UNSPECIFIED,
        )
        await client.call(
            client.registry.UnregisterDevice, r.UnregisterDeviceRequest(device_id=DEVICE), metadata=ADMIN_MD
        )
        change = await client.call(next, events)
        assert (change.status, change.previous) == (r.DEVICE_STATUS_UNREGISTERED, r.DEVICE_STATUS_ONLINE)
    finally:
        events.cancel()


async def test_a_client_cancelling_a_watch_ends_it_on_the_node(
    client: Client, backend: MemoryBackend
) -> None:
    r = client.stubs.registry
    events = client.registry.WatchStatus(r.WatchStatusRequest(), metadata=ADMIN_MD, timeout=10)
    with trio.fail_after(5):
        await backend.wait_until_status_watchers(1)
    events.cancel()
    with trio.fail_after(5):
        await backend.wait_until_status_watchers(0)


async def test_capabilities_snapshot_and_watch(client: Client) -> None:
    c = client.stubs.capabilities
    await _register(client, NET_A, ["audio.play"])
    snapshot = await client.call(
        client.capabilities.GetCapabilities, c.GetCapabilitiesRequest(), metadata=ADMIN_MD
    )
    names = [cap.name for cap in snapshot.capabilities]
    assert names == sorted(names)
    audio = next(cap for cap in snapshot.capabilities if cap.name == "audio.play")
    assert (audio.local, audio.online_devices, audio.devices) == (False, 1, 1)
    assert any(s.name == "rpc" and s.state == c.SERVICE_STATE_RUNNING for s in snapshot.services)
    updates = client.capabilities.WatchCapabilities(
        c.WatchCapabilitiesRequest(), metadata=ADMIN_MD, timeout=10
    )
    try:
        first = await client.call(next, updates)
        await _register(client, NET_A, ["audio.play"])
        second = await client.call(next, updates)
        assert second.revision > first.revision
        audio = next(cap for cap in second.capabilities if cap.name == "audio.play")
        assert audio.devices == 2
    finally:
        updates.cancel()


async def test_send_acknowledges_with_the_frame_message_id(client: Client) -> None:
    ro = client.stubs.routing
    frame = bytes([1, 0x10, 0, 0]) + (4242).to_bytes(8, "big") + bytes(36)
    ack = await client.call(client.routing.Send, ro.SendRequest(frame=frame), metadata=ADMIN_MD)
    assert (ack.message_id, ack.status, ack.recipients) == (4242, ro.DELIVERY_STATUS_DELIVERED, 1)
    empty = await client.error(client.routing.Send, ro.SendRequest(frame=b""), metadata=ADMIN_MD)
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_connect_echoes_frames_in_order(client: Client) -> None:
    ro = client.stubs.routing
    frames = [i.to_bytes(4, "big") * 16 for i in range(500)]

    def run() -> list[bytes]:
        replies = client.routing.Connect(
            iter(ro.ConnectFrame(frame=f) for f in frames), metadata=ADMIN_MD, timeout=10
        )
        return [reply.frame for reply in replies]

    assert await client.call(run) == frames


async def test_lock_acquire_queues_then_grants_after_release(client: Client) -> None:
    lk = client.stubs.locks
    first = client.locks.Acquire(lk.AcquireRequest(resource="printer", lease_ms=60_000), metadata=ADMIN_MD)
    second = None
    try:
        granted = await client.call(next, first)
        assert granted.state == lk.ACQUIRE_STATE_GRANTED
        assert granted.lease.fencing_token == 1
        assert granted.lease.holder == "tok_admin"
        second = client.locks.Acquire(lk.AcquireRequest(resource="printer"), metadata=ADMIN_MD)
        queued = await client.call(next, second)
        assert (queued.state, queued.queue_position) == (lk.ACQUIRE_STATE_QUEUED, 0)
        busy = client.locks.Acquire(
            lk.AcquireRequest(resource="printer", wait_timeout_ms=0), metadata=ADMIN_MD
        )
        refused = await client.call(next, busy)
        assert (refused.state, refused.reason) == (lk.ACQUIRE_STATE_REFUSED, lk.REFUSAL_REASON_BUSY)
        listing = await client.call(client.locks.List, lk.ListLocksRequest(), metadata=ADMIN_MD)
        assert [(i.resource, i.waiters) for i in listing.locks] == [("printer", 1)]
        released = await client.call(
            client.locks.Release, lk.ReleaseRequest(resource="printer", fencing_token=1), metadata=ADMIN_MD
        )
        assert released.released
        ended = await client.call(next, first)
        assert ended.state == lk.ACQUIRE_STATE_RELEASED
        second_grant = await client.call(next, second)
        assert second_grant.state == lk.ACQUIRE_STATE_GRANTED
        assert second_grant.lease.fencing_token == 2
        stale = await client.error(
            client.locks.Refresh, lk.RefreshRequest(resource="printer", fencing_token=1), metadata=ADMIN_MD
        )
        assert stale.code() == grpc.StatusCode.NOT_FOUND
    finally:
        first.cancel()
        if second is not None:
            second.cancel()


def test_model_statuses_cover_the_proto_enum(stubs: object) -> None:
    from node.rpc import _convert

    assert set(_convert.DEVICE_STATUS) == set(model.DeviceStatusName.__args__)  # type: ignore[attr-defined]
