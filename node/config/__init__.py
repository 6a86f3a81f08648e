"""Node settings: schema, loading with precise errors, default config rendering."""

from node._section import LIVE, Section
from node.config._load import (
    Loaded,
    SettingsError,
    changed_fields,
    live_fields,
    load_settings,
)
from node.config._model import (
    ApiSettings,
    LoggingSettings,
    RegistrySettings,
    ServerSettings,
    StoreSettings,
)
from node.config._render import render_default_config
from node.config._root import Settings
from node.config._watch import ConfigWatcher, merge_live

__all__ = [
    "LIVE",
    "ApiSettings",
    "ConfigWatcher",
    "Loaded",
    "LoggingSettings",
    "RegistrySettings",
    "Section",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "StoreSettings",
    "changed_fields",
    "live_fields",
    "load_settings",
    "merge_live",
    "render_default_config",
]
