"""Hot reload in a running node: a live change reaches the services; a broken edit does not."""

from __future__ import annotations

from pathlib import Path

import trio

from node.app import ephemeral_overrides, run_node
from node.config import load_settings

BASE = "[server]\nconfig_poll_interval_s = 0.02\n"


async def test_running_node_applies_live_change_and_survives_broken_edit(tmp_path: Path) -> None:
    path = tmp_path / "asgard.toml"
    path.write_text(BASE + "[api]\nrate_per_token = 100.0\n")
    overrides = ephemeral_overrides(tmp_path / "data")
    settings = load_settings(path, environ={}, overrides=overrides).settings
    send, checks = trio.open_memory_channel[tuple[bool, str | None]](10)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(
                lambda task_status: run_node(
                    settings,
                    config_path=path,
                    handle_signals=False,
                    overrides=overrides,
                    task_status=task_status,
                )
            )
            handle.extra["config_watcher"].observers.append(lambda ok, err: send.send_nowait((ok, err)))

            path.write_text(BASE + "[api]\nrate_per_token = 7.0\n[registry]\nheartbeat_interval_s = 2.0\n")
            assert await checks.receive() == (True, None)
            assert handle.api.token_limiter.rate == 7.0
            assert handle.registry.settings.heartbeat_interval_s == 2.0

            path.write_text(BASE + "[api]\nrate_per_token = -3\n")
            applied, error = await checks.receive()
            assert not applied and error is not None and "api.rate_per_token" in error
            assert handle.api.token_limiter.rate == 7.0

            path.write_text(
                BASE + "[api]\nrate_per_token = 9.0\n[registry]\nheartbeat_interval_s = 2.0\n"
                "[store]\nbusy_timeout_ms = 10\n"
            )
            assert await checks.receive() == (True, None)
            assert handle.api.token_limiter.rate == 9.0
            assert handle.api.settings.store.busy_timeout_ms == settings.store.busy_timeout_ms
            assert handle.api.stats_providers["config"]()["pending_restart"] == ["store.busy_timeout_ms"]
            handle.stop()
