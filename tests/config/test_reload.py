"""Hot reload: live keys apply, restart-only keys are reported, a broken edit changes nothing."""

from __future__ import annotations

from pathlib import Path

from node.config import ConfigWatcher, Settings, load_settings, merge_live


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _watcher(path: Path, applied: list[Settings]) -> ConfigWatcher:
    current = load_settings(path, environ={}).settings
    return ConfigWatcher(path, current, applied.append, environ={})


def test_live_change_applies_and_restart_change_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "asgard.toml"
    _write(path, '[logging]\nlevel = "INFO"\n[api]\nport = 7700\n')
    applied: list[Settings] = []
    watcher = _watcher(path, applied)
    _write(path, '[logging]\nlevel = "DEBUG"\n[api]\nport = 7800\nrate_per_token = 5.0\n')
    assert watcher.check() is True
    assert len(applied) == 1
    effective = applied[0]
    assert effective.logging.level == "DEBUG"
    assert effective.api.rate_per_token == 5.0
    assert effective.api.port == 7700  # needs a restart: the running value stays
    assert watcher.pending_restart == ["api.port"]
    assert watcher.current is effective


def test_broken_edit_keeps_running_config(tmp_path: Path) -> None:
    path = tmp_path / "asgard.toml"
    _write(path, '[logging]\nlevel = "INFO"\n')
    applied: list[Settings] = []
    watcher = _watcher(path, applied)
    before = watcher.current
    _write(path, '[logging]\nlevel = "LOUD"\n')
    assert watcher.check() is False
    assert applied == []
    assert watcher.current is before
    assert watcher.last_error is not None and "logging.level" in watcher.last_error
    _write(path, "[logging\n")
    assert watcher.check() is False
    assert "TOML syntax error" in (watcher.last_error or "")
    _write(path, '[logging]\nlevel = "WARNING"\n')
    assert watcher.check() is True
    assert applied[-1].logging.level == "WARNING"
    assert watcher.last_error is None


def test_unchanged_file_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "asgard.toml"
    _write(path, '[logging]\nlevel = "INFO"\n')
    applied: list[Settings] = []
    watcher = _watcher(path, applied)
    assert watcher.check() is False
    _write(path, '[logging]\nlevel = "INFO"\n# a comment only\n')
    assert watcher.check() is False
    assert applied == []


def test_merge_live_only_takes_live_keys() -> None:
    old = Settings()
    new = Settings.model_validate(
        {"registry": {"heartbeat_interval_s": 5, "max_capabilities": 3}, "server": {"node_name": "x"}}
    )
    effective, live, restart = merge_live(old, new)
    assert effective.registry.heartbeat_interval_s == 5
    assert effective.registry.max_capabilities == old.registry.max_capabilities
    assert live == {("registry", "heartbeat_interval_s")}
    assert restart == {("registry", "max_capabilities"), ("server", "node_name")}
