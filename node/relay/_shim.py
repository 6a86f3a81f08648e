"""Work around an import cycle until the engine's settings module imports `node.config._model`.

`node.config._root` embeds `RelaySettings`, so importing `node.config` imports this package while
`node.config` is still half-initialised; `_wssettings` then asks that half-initialised package for
`LIVE` and `Section`, which it binds only later. `bind_config_names` binds them first.
"""

from __future__ import annotations

import sys


def bind_config_names() -> None:
    """Give a half-initialised `node.config` package the names `_wssettings` imports from it."""
    package = sys.modules.get("node.config")
    if package is not None and not hasattr(package, "Section"):
        from node.config import _model

        package.LIVE = _model.LIVE  # type: ignore[attr-defined]
        package.Section = _model.Section  # type: ignore[attr-defined]
