"""Session set-up and every error path: auth, Origin, path, register, frames, limits, closes."""

from __future__ import annotations

import json
import uuid

import pytest

from node.auth import SYSTEM, Role
from node.client import NackError
from node.relay import DeviceLink
from node.router import ack_frame
from tests.relay.conftest import StartRelay
from tests.relay.helpers import RawWs, RelayEnv, control, deadline, frame
from wire.device import (
    AckStatus,
    FrameType,
    Heartbeat,
    Hello,
    NackMessage,
    NackReason,
    Register,
    Registered,
    Welcome,
    decode_nack_untrusted,
    encode_frame,
)


def register(dev_id: uuid.UUID, net: uuid.UUID, **kw: object) -> bytes:
    message = Register(device_id=dev_id, network_id=net, name="t", world_type="physical")
    return control(message, source=dev_id, **kw)


async def registered_raw(env: RelayEnv, *, role: Role = Role.DEVICE) -> tuple[RawWs, uuid.UUID]:
    dev = await env.device(role=role)
    ws = await env.raw(token=dev.token)
    assert isinstance(await ws.control(), Welcome)
    await ws.send(register(dev.device_id, env.network_id))
    assert isinstance(await ws.control(), Registered)
    return ws, dev.device_id


async def expect_nack(ws: RawWs, reason: NackReason) -> NackMessage:
    f = await ws.frame()
    assert f.type == FrameType.NACK, f
    nack = decode_nack_untrusted(f.payload)
    assert nack.reason == reason, nack
    return NackMessage(nack.reason, nack.detail)


async def test_header_auth_welcomes_with_message_id_zero(env: RelayEnv) -> None:
    dev = await env.device()
    async with deadline():
        ws = await env.raw(token=dev.token)
        assert ws.status == 101
        f = await ws.frame()
    assert (f.type, f.message_id) == (FrameType.WELCOME, 0)
    welcome = json.loads(bytes(f.payload))
    assert welcome["device_id"] == str(dev.device_id)
    assert welcome["max_payload_bytes"] == 1 << 20
    assert welcome["heartbeat_interval_s"] > 0


async def test_an_invalid_header_token_is_refused_with_401(env: RelayEnv) -> None:
    async with deadline():
        ws = await env.raw(token="asg_not-a-real-token")
    assert ws.status == 401
    assert b"www-authenticate: bearer" in ws.head.lower()


async def test_hello_authenticates_and_answers_with_its_message_id(env: RelayEnv) -> None:
    dev = await env.device()
    async with deadline():
        ws = await env.raw()
        assert ws.status == 101
        await ws.send(frame(FrameType.DIRECT, dev.device_id, message_id=3, payload=b"early"))
        await expect_nack(ws, NackReason.UNAUTHENTICATED)
        await ws.send(control(Hello(token=dev.token, client="test/1"), message_id=77))
        f = await ws.frame()
        assert (f.type, f.message_id) == (FrameType.WELCOME, 77)
        await ws.send(control(Hello(token=dev.token), message_id=78))
        await expect_nack(ws, NackReason.INVALID_INPUT)  # HELLO once


async def test_a_bad_hello_closes_with_4001(env: RelayEnv) -> None:
    async with deadline():
        ws = await env.raw()
        await ws.send(control(Hello(token="asg_wrong")))
        assert await ws.close_code() == 4001


async def test_no_hello_in_time_closes_with_4001(start_relay: StartRelay) -> None:
    env = await start_relay(**{"relay.hello_timeout_s": 0.2})
    async with deadline():
        ws = await env.raw()
        assert await ws.close_code() == 4001


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("Origin: https://evil.example\r\n", 403),
        ("Origin: https://home.example\r\n", 101),
        ("", 101),
    ],
)
async def test_origin_allow_list(start_relay: StartRelay, headers: str, status: int) -> None:
    env = await start_relay(**{"relay.allowed_origins": ["https://home.example"]})
    dev = await env.device()
    async with deadline():
        ws = await env.raw(token=dev.token, extra=headers)
    assert ws.status == status


async def test_another_path_is_404(env: RelayEnv) -> None:
    async with deadline():
        ws = await env.raw(path="/elsewhere")
    assert ws.status == 404


async def test_register_refusals(env: RelayEnv) -> None:
    dev, other = await env.device(), await env.device()
    async with deadline():
        ws = await env.raw(token=dev.token)
        await ws.control()
        await ws.send(frame(FrameType.DIRECT, dev.device_id, other.device_id, payload=b"x"))
        await expect_nack(ws, NackReason.NOT_REGISTERED)
        await ws.send(register(other.device_id, env.network_id))  # not its own device
        await expect_nack(ws, NackReason.NOT_PERMITTED)
        await ws.send(register(dev.device_id, await env.network()))  # outside the token's networks
        await expect_nack(ws, NackReason.NOT_FOUND)
        await ws.send(
            control(
                Register(device_id=dev.device_id, network_id=env.network_id, name="t", world_type="nope"),
                source=dev.device_id,
            )
        )
        await expect_nack(ws, NackReason.INVALID_INPUT)
        await ws.send(register(dev.device_id, env.network_id))
        assert isinstance(await ws.control(), Registered)
        await ws.send(register(other.device_id, env.network_id))  # one device per session
        await expect_nack(ws, NackReason.INVALID_INPUT)


async def test_a_viewer_token_cannot_register(env: RelayEnv) -> None:
    secret, _ = await env.handle.tokens.create(name="viewer", role=Role.VIEWER)
    async with deadline():
        ws = await env.raw(token=secret)
        await ws.control()
        await ws.send(register(uuid.uuid4(), env.network_id))
        await expect_nack(ws, NackReason.NOT_PERMITTED)


async def test_source_must_be_the_registered_device(env: RelayEnv) -> None:
    async with deadline():
        ws, me = await registered_raw(env)
        await ws.send(frame(FrameType.DIRECT, uuid.uuid4(), me, payload=b"spoof"))
        nack = await expect_nack(ws, NackReason.INVALID_INPUT)
        assert "source" in nack.detail
        await ws.send(control(Heartbeat(), source=uuid.uuid4()))
        await expect_nack(ws, NackReason.INVALID_INPUT)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            encode_frame(FrameType.DIRECT, message_id=9, source=bytes(16))[:-4] + b"\x00\x00\x00\x05",
            NackReason.BAD_FRAME,
        ),
        (bytes([1, 0x30]) + bytes(46), NackReason.BAD_FRAME),  # unknown type
        (bytes([1, 0x10, 0x80, 0]) + bytes(44), NackReason.BAD_FRAME),  # undefined flag bits
        (bytes([1, 0x05, 0, 0]) + bytes(40) + b"\x00\x00\x00\x02{]", NackReason.BAD_FRAME),  # not JSON
        (bytes([1, 0x06, 0, 0]) + bytes(44), NackReason.BAD_FRAME),  # node-only type
        (
            bytes([1, 0x27, 0, 0]) + bytes(40) + b"\x00\x00\x00\x02{}",
            NackReason.BAD_FRAME,
        ),  # reserved lock type without a handler
    ],
)
async def test_bad_frames_are_nacked(env: RelayEnv, raw: bytes, reason: NackReason) -> None:
    async with deadline():
        ws, me = await registered_raw(env, role=Role.SERVICE)
        fixed = raw[:12] + me.bytes + raw[28:] if raw[1] != 0x06 else raw
        await ws.send(fixed)
        await expect_nack(ws, reason)


async def test_unsupported_version_nacks_then_closes_4002(env: RelayEnv) -> None:
    async with deadline():
        ws, me = await registered_raw(env)
        await ws.send(bytes([2]) + frame(FrameType.HEARTBEAT, me, payload=b"{}")[1:])
        await expect_nack(ws, NackReason.UNSUPPORTED_VERSION)
        assert await ws.close_code() == 4002


async def test_a_frame_too_short_to_answer_closes_1008(env: RelayEnv) -> None:
    async with deadline():
        ws, _ = await registered_raw(env)
        await ws.send(b"\x01\x10\x00")
        assert await ws.close_code() == 1008


async def test_text_messages_close_1003(env: RelayEnv) -> None:
    async with deadline():
        ws, _ = await registered_raw(env)
        await ws.send(b"{}", opcode=0x1)
        assert await ws.close_code() == 1003


async def test_oversize_message_closes_1009_and_oversize_payload_is_nacked(start_relay: StartRelay) -> None:
    env = await start_relay(**{"relay.max_payload_bytes": 1000, "relay.websocket.max_message_bytes": 3000})
    async with deadline():
        ws, me = await registered_raw(env)
        await ws.send(frame(FrameType.DIRECT, me, me, payload=b"x" * 1500))
        await expect_nack(ws, NackReason.TOO_LARGE)
        await ws.send(frame(FrameType.DIRECT, me, me, payload=b"x" * 5000))
        assert await ws.close_code() == 1009


async def test_message_rate_limit_closes_1008(start_relay: StartRelay) -> None:
    env = await start_relay(**{"relay.rate_per_s": 1.0, "relay.burst": 10})
    async with deadline():
        ws, me = await registered_raw(env)
        for i in range(40):
            await ws.send(frame(FrameType.DIRECT, me, me, message_id=i, payload=b"x"))
        assert await ws.close_code() == 1008
    assert env.relay.stats.rate_limited == 1


async def test_heartbeat_acks_and_revocation_closes_4003(env: RelayEnv) -> None:
    dev = await env.device()
    async with deadline():
        ws = await env.raw(token=dev.token)
        await ws.control()
        await ws.send(register(dev.device_id, env.network_id))
        await ws.control()
        await ws.send(control(Heartbeat(status="busy"), source=dev.device_id, flags=1, message_id=5))
        ack = await ws.frame()
        assert (ack.type, ack.message_id) == (FrameType.ACK, 5)
        token_id = next(t.token_id for t in env.handle.tokens.list() if t.device_id == str(dev.device_id))
        await env.handle.tokens.revoke(token_id)
        await ws.send(control(Heartbeat(), source=dev.device_id))
        assert await ws.close_code() == 4003


async def test_unregistering_the_device_closes_4003(env: RelayEnv) -> None:
    async with deadline():
        ws, me = await registered_raw(env)
        await env.handle.registry.unregister_device(SYSTEM, str(me))
        assert await ws.close_code() == 4003


async def test_a_second_session_replaces_the_first_with_4000(env: RelayEnv) -> None:
    dev, peer = await env.device(), await env.device()
    cp = await env.client(peer)
    async with deadline():
        first = await env.raw(token=dev.token)
        await first.control()
        await first.send(register(dev.device_id, env.network_id))
        assert (await first.control()).replaced_session is False
        second = await env.raw(token=dev.token)
        await second.control()
        await second.send(register(dev.device_id, env.network_id))
        answer = await second.control()
        assert isinstance(answer, Registered) and answer.replaced_session
        assert await first.close_code() == 4000
        await cp.send(dev.device_id, b"to the new one")
        assert (await second.frame()).payload.tobytes() == b"to the new one"
    assert env.relay.stats.replaced == 1


async def test_the_lock_seam_dispatches_to_a_registered_handler(env: RelayEnv) -> None:
    seen: list[int] = []

    async def handler(link: DeviceLink, f, replies: list[bytes]) -> None:  # type: ignore[no-untyped-def]
        seen.append(f.type)
        replies.append(ack_frame(f.message_id, link.device_bytes, AckStatus.DELIVERED))

    env.relay.set_handler(0x21, handler)
    with pytest.raises(ValueError, match="lock"):
        env.relay.set_handler(FrameType.DIRECT, handler)
    async with deadline():
        ws, me = await registered_raw(env)
        await ws.send(frame(0x21, me, message_id=4, payload=b"{}"))
        ack = await ws.frame()
    assert (ack.type, ack.message_id, seen) == (FrameType.ACK, 4, [0x21])


async def test_client_reports_nack_for_register_conflict(env: RelayEnv) -> None:
    dev = await env.device(role=Role.SERVICE)
    await env.client(dev)
    other_net = await env.network()
    moved = type(dev)(dev.device_id, other_net, dev.token)
    with pytest.raises(NackError) as info:
        await env.client(moved)
    assert info.value.slug == "conflict"
