"""The device client: reconnect and backoff, de-duplication, DELIVERED, errors, session endings."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from node.client import ClientSettings, ConnectionLost, DeviceClient, SeenIds, SessionEnded
from store import queue as q
from tests.relay.helpers import RelayEnv, deadline
from tests.relay.test_durable import offline, settle
from wire.device import FrameType, encode_frame


def kick(env: RelayEnv, dev_id: bytes, code: int = 1012) -> None:
    """Close a device's session from the node with a code after which clients reconnect."""
    env.relay.table.sessions[dev_id].close(code, "restarting")


async def test_hello_auth_mode(env: RelayEnv) -> None:
    a, b = await env.device(), await env.device()
    ca = await env.client(a, auth="hello")
    cb = await env.client(b)
    assert ca.welcome is not None and ca.welcome.device_id == a.device_id
    async with deadline():
        await ca.send(b.device_id, b"via hello")
        assert (await cb.receive()).payload == b"via hello"


async def test_reconnects_and_drops_the_duplicate_of_an_unconfirmed_message(env: RelayEnv) -> None:
    a, b = await env.device(), await env.device()
    ca = await env.client(a)
    cb = await env.client(b, reconnect=True, backoff_initial_s=0.01, auto_delivered=False)
    async with deadline():
        await ca.send(b.device_id, b"once", durable=True)
        first = await cb.receive()  # taken, not yet confirmed
        kick(env, b.raw_id)
        await ca.send(b.device_id, b"after", durable=True)  # queued or live, whichever session
        while cb.sessions < 2:
            await cb.wait_connected()
            if cb.sessions < 2:
                await trio.testing.wait_all_tasks_blocked()
        second = await cb.receive()
        assert second.payload == b"after"  # the redelivered copy of "once" was dropped...
        assert cb.duplicates == 1
        await cb.delivered(second)
        await settle(env, cb)
    assert first.payload == b"once"
    assert env.handle.storage.read(q.depth, str(b.device_id)).messages == 0  # ...and confirmed


async def test_pending_sends_fail_with_connection_lost(env: RelayEnv) -> None:
    a = await env.device()
    ca = await env.client(a, reconnect=False)
    kick(env, a.raw_id)
    async with deadline():
        while ca.ended is None:
            await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(ConnectionLost):
        await ca.send(a.device_id, b"x")
    assert ca.ended.code == 1012


async def test_a_replaced_session_does_not_reconnect(env: RelayEnv) -> None:
    a = await env.device()
    first = await env.client(a, reconnect=True, backoff_initial_s=0.01)
    await env.client(a)
    async with deadline():
        while first.ended is None:
            await trio.testing.wait_all_tasks_blocked()
    assert first.ended.code == 4000
    assert first.sessions == 1


async def test_an_invalid_token_ends_before_the_first_session(env: RelayEnv) -> None:
    a = await env.device()
    bad = type(a)(a.device_id, a.network_id, "asg_invalid")
    for auth in ("header", "hello"):
        with pytest.raises(SessionEnded) as info:
            await env.client(bad, auth=auth, reconnect=True)
        assert info.value.code == 4001


async def test_an_unanswered_frame_times_out(env: RelayEnv) -> None:
    a = await env.device()
    ca = await env.client(a, ack_timeout_s=0.2)
    quiet = encode_frame(
        FrameType.DIRECT, message_id=1, source=a.device_id, destination=a.device_id, payload=b""
    )
    async with deadline():
        with pytest.raises(trio.TooSlowError):
            await ca.send_frame(quiet, wait_ack=True)  # no ACK_REQUESTED: the node stays silent


async def test_backoff_doubles_with_jitter_up_to_the_cap(autojump_clock: trio.testing.MockClock) -> None:
    client = DeviceClient(
        "ws://127.0.0.1:9/v1/ws",
        token="asg_x",
        device_id="11111111-2222-4333-8444-555555555555",
        network_id="6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
        settings=ClientSettings(backoff_initial_s=0.5, backoff_max_s=8.0),
    )
    attempts: list[float] = []

    async def refused(task_status: object) -> tuple[int | None, str]:
        attempts.append(trio.current_time())
        if len(attempts) == 9:
            client._stopping = True
        return None, "connection refused"

    client._one_session = refused  # type: ignore[method-assign]
    with pytest.raises(SessionEnded):
        await client.run()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    expected = [0.5, 1, 2, 4, 8, 8, 8, 8]
    assert all(d / 2 <= g <= d for g, d in zip(gaps, expected, strict=True)), gaps


def test_seen_ids_forget_the_oldest() -> None:
    seen = SeenIds(2)
    assert seen.add((b"a", 1)) and seen.add((b"a", 2))
    assert not seen.add((b"a", 1))
    assert seen.add((b"a", 3))  # evicts (a, 2), the least recently seen
    assert seen.add((b"a", 2))
    assert len(seen) == 2


async def test_durable_offline_roundtrip_with_the_context_manager(env: RelayEnv) -> None:
    from node.client import open_device_client

    a, b = await env.device(), await offline(env)
    async with (
        deadline(),
        open_device_client(env.url, token=a.token, device_id=a.device_id, network_id=a.network_id) as ca,
    ):
        await ca.send(b.device_id, b"later", durable=True)
    async with (
        deadline(),
        open_device_client(env.url, token=b.token, device_id=b.device_id, network_id=b.network_id) as cb,
    ):
        async for message in cb:
            assert (message.payload, message.redelivered) == (b"later", True)
            break
