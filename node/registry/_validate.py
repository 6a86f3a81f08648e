"""Validation of registry input shared by every surface (REST, gRPC, WebSocket)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from node.config import RegistrySettings
from node.errors import InvalidInput

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
CAPABILITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
NIL_UUID = "00000000-0000-0000-0000-000000000000"
MAX_NAME_CHARS = 128


def uuid_id(value: object, field: str) -> str:
    """A canonical lowercase UUID string.

    Raises:
        InvalidInput: not a hyphenated UUID, or the nil UUID.
    """
    if not isinstance(value, str) or not UUID_RE.match(value):
        raise InvalidInput(f"{field}: expected a UUID like 3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    canonical = value.lower()
    if canonical == NIL_UUID:
        raise InvalidInput(f"{field}: the nil UUID is reserved")
    return canonical


def name(value: object, field: str, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: expected a string")
    if len(value) > MAX_NAME_CHARS or (not allow_empty and not value.strip()):
        raise InvalidInput(
            f"{field}: 1 to {MAX_NAME_CHARS} characters"
            if not allow_empty
            else f"{field}: at most {MAX_NAME_CHARS} characters"
        )
    if any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{field}: control characters are not allowed")
    return value


def world_type(value: object, settings: RegistrySettings) -> str:
    if value not in settings.world_types:
        raise InvalidInput(f"world_type: expected one of {', '.join(settings.world_types)}")
    return str(value)


def capabilities(value: object, settings: RegistrySettings) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise InvalidInput("capabilities: expected a list of capability names")
    if len(value) > settings.max_capabilities:
        raise InvalidInput(f"capabilities: at most {settings.max_capabilities} entries")
    for cap in value:
        if not isinstance(cap, str) or not CAPABILITY_RE.match(cap):
            raise InvalidInput(
                "capabilities: names are letters, digits and . _ : / - (starting with a letter or digit)"
            )
        if len(cap) > settings.max_capability_chars:
            raise InvalidInput(f"capabilities: names are at most {settings.max_capability_chars} characters")
    return tuple(dict.fromkeys(value))


def hardware_spec(value: object, settings: RegistrySettings) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput("hardware_spec: expected a JSON object")
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError):
        raise InvalidInput("hardware_spec: not representable as JSON") from None
    if size > settings.max_hardware_spec_bytes:
        raise InvalidInput(f"hardware_spec: at most {settings.max_hardware_spec_bytes} bytes as JSON")
    if _depth(value) > 8:
        raise InvalidInput("hardware_spec: nested deeper than 8 levels")
    return value


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def uuid_list(values: Sequence[object], field: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(uuid_id(v, field) for v in values))
