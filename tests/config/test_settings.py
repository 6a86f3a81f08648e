"""Settings: defaults, TOML file, environment overrides, precise errors, default config rendering."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from node.config import Settings, SettingsError, load_settings, render_default_config


def test_defaults_without_a_file() -> None:
    loaded = load_settings(None, environ={})
    assert loaded.settings == Settings()
    assert loaded.settings.api.port == 7700
    assert loaded.settings.store_path() == Path("var/asgard.db")


def test_file_values_and_env_override_them(tmp_path: Path) -> None:
    path = tmp_path / "asgard.toml"
    path.write_text('[api]\nport = 9000\ncors_origins = ["https://a.example"]\n[server]\nnode_name = "den"\n')
    loaded = load_settings(
        path, environ={"ASGARD_API__PORT": "8000", "ASGARD_API__CORS_ORIGINS": '["https://b.example"]'}
    )
    assert loaded.settings.api.port == 8000
    assert loaded.settings.api.cors_origins == ["https://b.example"]
    assert loaded.settings.server.node_name == "den"
    assert loaded.origins[("api", "port")] == "environment variable ASGARD_API__PORT"
    assert loaded.origins[("server", "node_name")] == str(path)


def test_unrelated_environment_is_ignored() -> None:
    loaded = load_settings(None, environ={"ASGARD_CONFIG": "x", "ASGARDX__API": "1", "HOME": "/root"})
    assert loaded.settings == Settings()


def test_errors_name_source_key_expected_and_got(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[api]\nport = "eighty"\nmystery = 1\n[registry]\ninactive_after_missed = 5\noffline_after_missed = 2\n'
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ={"ASGARD_STORE__BUSY_TIMEOUT_MS": "-1"})
    problems = caught.value.problems
    assert any(str(path) in p and "'api.port'" in p and "integer" in p and "'eighty'" in p for p in problems)
    assert any(str(path) in p and "unknown key 'api.mystery'" in p for p in problems)
    assert any(
        "'registry.offline_after_missed'" in p and "greater than inactive_after_missed" in p for p in problems
    )
    assert any(
        "ASGARD_STORE__BUSY_TIMEOUT_MS" in p and "'store.busy_timeout_ms'" in p and "'-1'" in p
        for p in problems
    )
    assert len(problems) == 4


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[api\nport = 1\n")
    with pytest.raises(SettingsError, match=r"broken\.toml: TOML syntax error"):
        load_settings(path, environ={})


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_rendered_default_config_loads_back_to_the_defaults(tmp_path: Path) -> None:
    text = render_default_config()
    assert "(live)" in text and "[api]" in text and "# Environment variables override" in text
    path = tmp_path / "asgard.toml"
    path.write_text(text)
    tomllib.loads(text)
    assert load_settings(path, environ={}).settings == Settings()


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(Exception, match="frozen"):
        settings.api.port = 1  # type: ignore[misc]
