"""Prometheus text exposition built from the services' `statistics()`."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import node

if TYPE_CHECKING:
    from node.api._context import ApiContext

NAME_SAFE = re.compile(r"[^a-zA-Z0-9_]")


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    if isinstance(value, int | float):  # bool is an int
        yield prefix, float(value)
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _flatten(f"{prefix}_{NAME_SAFE.sub('_', str(key))}", inner)


def render_metrics(c: ApiContext) -> str:
    """Every numeric statistic as an untyped gauge `asgard_<service>_<path>`."""
    lines = [
        "# HELP asgard_info Node build information.",
        "# TYPE asgard_info gauge",
        f'asgard_info{{version="{node.__version__}",node_id="{c.node_id}"}} 1',
        "# TYPE asgard_uptime_seconds gauge",
        f"asgard_uptime_seconds {c.clock.now() - c.started_at:.3f}",
        "# TYPE asgard_store_bytes gauge",
        f"asgard_store_bytes {c.storage.size_bytes()}",
    ]
    for service, provider in sorted(c.stats_providers.items()):
        for name, value in _flatten(f"asgard_{NAME_SAFE.sub('_', service)}", provider()):
            lines.append(f"{name} {value:g}")
    return "\n".join(lines) + "\n"
