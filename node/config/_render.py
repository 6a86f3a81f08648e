"""Render a commented default configuration file from the settings models (`asgard init`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from node.config._root import Settings

HEADER = """\
# Asgard node configuration (TOML).
#
# Every key below shows its default value; delete or comment out what you do not change.
# Environment variables override this file: ASGARD_<SECTION>__<KEY>, e.g. ASGARD_API__PORT=8000
# (lists as JSON: ASGARD_API__CORS_ORIGINS='["https://home.example"]').
# Keys marked "(live)" take effect while the node runs; others need a restart.
"""


def render_default_config() -> str:
    """The default configuration as a commented TOML document."""
    lines = [HEADER]
    defaults = Settings()
    for name in Settings.model_fields:
        section = getattr(defaults, name)
        lines.extend(_render_table(name, section))
    return "\n".join(lines) + "\n"


def _render_table(table: str, section: BaseModel) -> list[str]:
    """`[table]` with its keys, then each nested settings model as its own `[table.key]`."""
    lines = [f"\n[{table}]"]
    if type(section).__doc__:
        lines.append(f"# {(type(section).__doc__ or '').strip().splitlines()[0]}")
    nested: list[tuple[str, BaseModel]] = []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            nested.append((name, value))
            continue
        extra = field.json_schema_extra
        live = " (live)" if isinstance(extra, dict) and extra.get("live") else ""
        lines.append(f"# {field.description or name}{live}")
        if value is None:
            lines.append(f"# {name} = ")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    for name, value in nested:
        lines.extend(_render_table(f"{table}.{name}", value))
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, BaseModel):
        return _toml_value(value.model_dump(mode="json"))
    return json.dumps(str(value))
