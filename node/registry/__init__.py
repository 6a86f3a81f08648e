"""Device, network and connection registry with heartbeat-driven status."""

from node.registry.service import DevicePatch, DeviceSpec, Registry, RegistryEvent, Topology
from node.registry.state import INACTIVE, OFFLINE, ONLINE, STATUSES, StatusChange, StatusTracker

__all__ = [
    "INACTIVE",
    "OFFLINE",
    "ONLINE",
    "STATUSES",
    "DevicePatch",
    "DeviceSpec",
    "Registry",
    "RegistryEvent",
    "StatusChange",
    "StatusTracker",
    "Topology",
]
