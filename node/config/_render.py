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
    for name, field in Settings.model_fields.items():
        section = getattr(defaults, name)
        lines.append(f"\n[{name}]")
        if field.annotation is not None and field.annotation.__doc__:
            lines.append(f"# {field.annotation.__doc__.strip().splitlines()[0]}")
        lines.extend(_render_section(section))
    return "\n".join(lines) + "\n"


def _render_section(section: BaseModel) -> list[str]:
    lines = []
    for name, field in type(section).model_fields.items():
        extra = field.json_schema_extra
        live = " (live)" if isinstance(extra, dict) and extra.get("live") else ""
        lines.append(f"# {field.description or name}{live}")
        value = getattr(section, name)
        if value is None:
            lines.append(f"# {name} = ")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
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
