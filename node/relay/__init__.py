"""The WebSocket relay: device sessions, routing through `node.router`, the offline queue.

The settings are imported eagerly (node.config embeds them); the service on first use, because
it imports node.config itself.
"""

from typing import TYPE_CHECKING, Any

import node.config  # noqa: F401 - initialise the config package first (it embeds RelaySettings): see _shim
from node.relay._shim import bind_config_names

bind_config_names()

from node.relay._wssettings import WsSettings  # noqa: E402
from node.relay.settings import QueueSettings, RelaySettings  # noqa: E402

if TYPE_CHECKING:
    from node.relay._link import DeviceLink, FrameHandler
    from node.relay.service import RelayService, RelayStats

__all__ = [
    "DeviceLink",
    "FrameHandler",
    "QueueSettings",
    "RelayService",
    "RelaySettings",
    "RelayStats",
    "WsSettings",
]


def __getattr__(name: str) -> Any:
    if name in ("DeviceLink", "FrameHandler"):
        from node.relay import _link

        return getattr(_link, name)
    if name in ("RelayService", "RelayStats"):
        from node.relay import service

        return getattr(service, name)
    raise AttributeError(name)
