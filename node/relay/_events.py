"""EVENT frames: registry status changes fanned out to the sessions that SUBSCRIBEd to them.

One task for the whole relay reads `Registry.subscribe()` and looks up the watchers of each event's
device and networks; idle sessions cost nothing (no task, no channel per session). A watcher only
gets events about devices its token may see (`Principal.sees_any`), as everywhere in the registry.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from node.errors import ResourceExhausted
from node.registry import RegistryEvent
from node.relay._link import DeviceLink
from wire.device import HEADER, PROTOCOL_VERSION, ZERO_ID, Event, FrameType, encode_control

# registry event kind -> (EVENT "event" value, the status it implies when the event has none)
_KINDS = {
    "status": ("status", None),
    "registered": ("registered", "online"),
    "unregistered": ("unregistered", "offline"),
}


class EventHub:
    """Who watches which device and network."""

    def __init__(self) -> None:
        self.by_device: dict[str, set[DeviceLink]] = {}
        self.by_network: dict[str, set[DeviceLink]] = {}
        self.sent = 0
        self.dropped = 0

    def watch(self, link: DeviceLink, devices: Iterable[str], networks: Iterable[str], *, limit: int) -> None:
        """Add watches; raises ResourceExhausted past `limit` per session (nothing is added then)."""
        devices, networks = set(devices), set(networks)
        total = len(link.watching_devices | devices) + len(link.watching_networks | networks)
        if total > limit:
            raise ResourceExhausted(f"at most {limit} subscriptions per session")
        for device in devices:
            self.by_device.setdefault(device, set()).add(link)
        for network in networks:
            self.by_network.setdefault(network, set()).add(link)
        link.watching_devices |= devices
        link.watching_networks |= networks

    def unwatch(self, link: DeviceLink, devices: Iterable[str], networks: Iterable[str]) -> None:
        """Remove some watches."""
        for key, index, mine in (
            (devices, self.by_device, link.watching_devices),
            (networks, self.by_network, link.watching_networks),
        ):
            for name in key:
                watchers = index.get(name)
                if watchers is not None:
                    watchers.discard(link)
                    if not watchers:
                        del index[name]
                mine.discard(name)

    def forget(self, link: DeviceLink) -> None:
        """Remove every watch of a session (it closed, or sent UNSUBSCRIBE without fields)."""
        self.unwatch(link, list(link.watching_devices), list(link.watching_networks))

    def publish(self, ev: RegistryEvent) -> None:
        """Send `ev` as an EVENT frame to each watcher that may see the device."""
        kind = _KINDS.get(ev.kind)
        if kind is None:
            return
        watchers = set(self.by_device.get(ev.device_id, ()))
        for network in ev.networks:
            watchers |= self.by_network.get(network, set())
        if not watchers:
            return
        payload = _payload(ev, kind)
        for link in watchers:
            principal = link.principal
            if principal is None or not principal.sees_any(ev.networks):
                continue
            header = HEADER.pack(
                PROTOCOL_VERSION, FrameType.EVENT, 0, 0, ZERO_ID, link.device_bytes, len(payload)
            )
            if link.send(header + payload):
                self.sent += 1
            else:
                self.dropped += 1


def _payload(ev: RegistryEvent, kind: tuple[str, str | None]) -> bytes:
    name, implied = kind
    message = Event(
        event=name,
        device_id=uuid.UUID(ev.device_id),
        status=ev.new or implied or "online",
        at=ev.at,
        network_id=uuid.UUID(ev.networks[0]) if ev.networks else None,
    )
    return encode_control(message, message_id=0)[HEADER.size :]
