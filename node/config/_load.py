"""Loading settings: defaults, then the TOML file, then `ASGARD_SECTION__KEY` environment overrides.

Every error names where the bad value came from (file or environment variable), the key, what was
expected and what was found, so an operator can fix it without reading code.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from node.config._root import Settings

ENV_PREFIX = "ASGARD_"
MAX_CONFIG_BYTES = 1 << 20


class SettingsError(Exception):
    """The configuration is invalid; `problems` lists every finding, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Loaded:
    """Validated settings plus where each overridden key came from."""

    settings: Settings
    origins: Mapping[tuple[str, ...], str]


def load_settings(
    path: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Loaded:
    """Build settings from defaults, `path` (TOML, optional), the environment and `overrides`.

    Raises:
        SettingsError: the file cannot be read or parsed, or a value is invalid.
    """
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    if path is not None:
        data = _read_toml(path)
        for key in _leaf_keys(data):
            origins[key] = str(path)
    env = os.environ if environ is None else environ
    for key, value, var in _env_overrides(env):
        _set_path(data, key, value)
        origins[key] = f"environment variable {var}"
    for dotted, value in (overrides or {}).items():
        key = tuple(dotted.split("."))
        _set_path(data, key, value)
        origins[key] = "command line"
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, origins, str(path) if path else "defaults")) from None
    return Loaded(settings, origins)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read: {exc.strerror}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise SettingsError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SettingsError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{path}: TOML syntax error: {exc}"]) from None


def _env_overrides(env: Mapping[str, str]) -> Iterator[tuple[tuple[str, ...], Any, str]]:
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        key = tuple(part.lower() for part in var[len(ENV_PREFIX) :].split("__"))
        if any(not part for part in key):
            continue
        yield key, _env_value(env[var]), var


def _env_value(text: str) -> Any:
    """Lists and tables are written as JSON (`["a","b"]`); everything else stays a string."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return text
    return text


def _set_path(data: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    node = data
    for part in key[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[key[-1]] = value


def _leaf_keys(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, value in data.items():
        if isinstance(value, Mapping):
            yield from _leaf_keys(value, (*prefix, name))
        else:
            yield (*prefix, name)


def _describe(exc: ValidationError, origins: Mapping[tuple[str, ...], str], default: str) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        source = _origin_of(loc, origins) or default
        key = ".".join(loc) or "(root)"
        if err["type"] == "extra_forbidden":
            problems.append(f"{source}: unknown key '{key}'")
            continue
        got = err.get("input")
        problems.append(f"{source}: key '{key}': {err['msg'].lower()}; got {_short(got)}")
    return problems


def _origin_of(loc: tuple[str, ...], origins: Mapping[tuple[str, ...], str]) -> str | None:
    for size in range(len(loc), 0, -1):
        if loc[:size] in origins:
            return origins[loc[:size]]
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def live_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of every field marked safe to change while the node runs."""
    found: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("live"):
            found.add((*prefix, name))
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= live_fields(annotation, (*prefix, name))
    return found


def changed_fields(old: BaseModel, new: BaseModel) -> set[tuple[str, ...]]:
    """Paths of every leaf value that differs between two settings objects."""
    before, after = old.model_dump(), new.model_dump()
    keys = set(_leaf_keys(before)) | set(_leaf_keys(after))
    return {key for key in keys if _get(before, key) != _get(after, key)}


def _get(data: Mapping[str, Any], key: tuple[str, ...]) -> Any:
    node: Any = data
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
