"""The WebSocket relay: device sessions, routing through `node.router`, the offline queue.

The settings are imported eagerly; the service on first use: `node.config` embeds RelaySettings,
and the service imports `node.config`, so an eager import here would be a cycle.
"""

from typing import TYPE_CHECKING, Any

from node.relay._wssettings import WsSettings
from node.relay.settings import QueueSettings, RelaySettings

if TYPE_CHECKING:
    from node.relay._link import DeviceLink, FrameHandler
    from node.relay._locks import LeaseBook, RelayLocks
    from node.relay.service import RelayService, RelayStats

__all__ = [
    "DeviceLink",
    "FrameHandler",
    "LeaseBook",
    "QueueSettings",
    "RelayLocks",
    "RelayService",
    "RelaySettings",
    "RelayStats",
    "WsSettings",
]


def __getattr__(name: str) -> Any:
    if name in ("DeviceLink", "FrameHandler"):
        from node.relay import _link

        return getattr(_link, name)
    if name in ("LeaseBook", "RelayLocks"):
        from node.relay import _locks

        return getattr(_locks, name)
    if name in ("RelayService", "RelayStats"):
        from node.relay import service

        return getattr(service, name)
    raise AttributeError(name)
