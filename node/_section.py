"""The base of every settings section (kept apart from `node.config`, so that a service's settings
module can be imported by the root settings without an import cycle)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.config import JsonDict

LIVE: JsonDict = {"live": True}
"""`json_schema_extra` marker: the field may change while the node runs (hot reload)."""


class Section(BaseModel):
    """Base of every settings section: strict keys, immutable values."""

    model_config = ConfigDict(extra="forbid", frozen=True)
