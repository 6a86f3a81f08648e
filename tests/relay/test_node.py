"""The relay inside the node: announcement, live settings, graceful shutdown, disabled relay."""

from __future__ import annotations

import re

from node.config import load_settings
from tests.relay.conftest import StartRelay
from tests.relay.helpers import RelayEnv, deadline


async def test_the_announcement_names_the_relay_endpoint(env: RelayEnv) -> None:
    line = env.handle.announcement()
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/v1/ws", line["relay"])
    assert line["relay"] == env.url


async def test_live_settings_apply_to_new_connections(env: RelayEnv) -> None:
    dev = await env.device()
    new = load_settings(
        None,
        environ={},
        overrides={"relay.allowed_origins": ["https://home.example"], "relay.queue.ttl_s": 5.0},
    ).settings
    for hook in env.handle.extra["reload_hooks"]:
        hook(new)
    assert env.relay.queue.settings.ttl_s == 5.0
    assert env.relay.settings.port == 0  # restart-only fields keep their running values
    async with deadline():
        refused = await env.raw(token=dev.token, extra="Origin: https://elsewhere.example\r\n")
        allowed = await env.raw(token=dev.token, extra="Origin: https://home.example\r\n")
    assert (refused.status, allowed.status) == (403, 101)


async def test_shutdown_closes_sessions_with_1001(env: RelayEnv) -> None:
    dev = await env.device()
    async with deadline():
        ws = await env.raw(token=dev.token)
        await ws.control()
        env.handle.stop()
        assert await ws.close_code() == 1001


async def test_a_disabled_relay_is_not_started(start_relay: StartRelay) -> None:
    env = await start_relay(**{"relay.enabled": False})
    assert "relay" not in env.handle.addresses
    assert "relay" not in env.handle.api.stats_providers
