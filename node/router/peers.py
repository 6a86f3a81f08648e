"""The seam to other nodes: where a device that is not connected here may be reached.

The mesh fills this in (peer links over gRPC streams). Until then the router uses `NoPeers`, and
a device that is not connected locally is offline (its DURABLE messages are queued here).
"""

from __future__ import annotations

from typing import Protocol


class PeerLink(Protocol):
    """A link to a peer node."""

    @property
    def peer_id(self) -> str:
        """The peer node's id."""
        ...


class PeerRoutes(Protocol):
    """Routes to devices connected to peer nodes."""

    def route_for(self, device_id: bytes) -> PeerLink | None:
        """The link to the node where `device_id` (16 bytes) is connected, or None."""
        ...

    def forward(self, link: PeerLink, frame: bytes) -> bool:
        """Hand `frame` (the received bytes object, unchanged) to the link without waiting.

        Returns False when the link cannot take it now (its bounded queue is full or it is down).
        """
        ...

    def fan_out(self, frame: bytes) -> int:
        """Send a BROADCAST or MULTICAST frame (already delivered here) to every peer node once,
        without waiting; returns how many peer nodes it was sent to."""
        ...


class NoPeers:
    """A node alone: no device is reachable through a peer."""

    def route_for(self, device_id: bytes) -> PeerLink | None:
        """Always None."""
        return None

    def forward(self, link: PeerLink, frame: bytes) -> bool:
        """Never called (there is no link)."""
        return False

    def fan_out(self, frame: bytes) -> int:
        """No peer node to send it to."""
        return 0
