"""Timers under autojump_clock: keepalive ping and 1011 close, the HELLO deadline (4001).

The node runs in-process on real loopback sockets; Trio's virtual clock jumps whenever every task
waits, so 40 s of keepalive take milliseconds. No deadline is put around start-up here: the store's
writer thread works in real time while the clock jumps.
"""

from __future__ import annotations

import struct
from functools import partial
from pathlib import Path

import trio
import trio.testing

from node.app import NodeHandle, ephemeral_overrides, run_node
from node.auth import Role
from node.config import load_settings
from tests.relay.conftest import TEST_SETTINGS
from tests.relay.helpers import RawWs
from wire.device import FrameType, decode_frame_untrusted


async def start(nursery: trio.Nursery, tmp_path: Path) -> tuple[NodeHandle, int]:
    values = ephemeral_overrides(tmp_path / "node") | TEST_SETTINGS
    settings = load_settings(None, environ={}, overrides=values).settings
    handle: NodeHandle = await nursery.start(partial(run_node, settings, handle_signals=False))
    port = int(handle.addresses["relay"].rsplit(":", 1)[1].split("/")[0])
    return handle, port


async def test_silent_client_is_pinged_then_closed_1011(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    handle, port = await start(nursery, tmp_path)
    secret, _ = await handle.tokens.create(name="idle", role=Role.SERVICE)
    ws = await RawWs.connect(port)
    try:
        await ws.handshake("/v1/ws", f"Authorization: Bearer {secret}\r\n")
        opcode, payload = await ws.read() or (0, b"")
        assert decode_frame_untrusted(payload, max_payload=1 << 20).type == FrameType.WELCOME
        start_at = trio.current_time()
        opcode, _ = await ws.read() or (0, b"")
        assert opcode == 0x9  # ping, after ping_interval_s of silence
        pinged_at = trio.current_time()
        opcode, payload = await ws.read() or (0, b"")  # the ping stays unanswered
        closed_at = trio.current_time()
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (0x8, 1011)
    finally:
        ws.close()
        handle.stop()
    assert 20.0 <= pinged_at - start_at < 26.0
    assert 20.0 <= closed_at - pinged_at < 26.0


async def test_a_client_answering_pings_stays_connected(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    handle, port = await start(nursery, tmp_path)
    secret, _ = await handle.tokens.create(name="idle", role=Role.SERVICE)
    ws = await RawWs.connect(port)
    try:
        await ws.handshake("/v1/ws", f"Authorization: Bearer {secret}\r\n")
        await ws.read()  # WELCOME
        start_at = trio.current_time()
        for _ in range(5):
            opcode, payload = await ws.read() or (0, b"")
            assert opcode == 0x9
            await ws.send(payload, opcode=0xA)  # pong
        assert trio.current_time() - start_at >= 100.0
    finally:
        ws.close()
        handle.stop()


async def test_hello_deadline_closes_4001(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    handle, port = await start(nursery, tmp_path)
    ws = await RawWs.connect(port)
    try:
        await ws.handshake("/v1/ws", "")
        start_at = trio.current_time()
        assert await ws.close_code() == 4001
    finally:
        ws.close()
        handle.stop()
    assert 10.0 <= trio.current_time() - start_at < 11.0
