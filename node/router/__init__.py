"""The router: routing table, sessions with bounded outboxes, delivery cursors and the peer seam."""

from node.router._drain import RowReader, drain
from node.router._outbox import FlushHub, Outbox
from node.router._replies import DEFAULT_DETAILS, ack_frame, nack_frame
from node.router._router import (
    DELIVERED_ONE,
    NO_RECIPIENT,
    NOT_PERMITTED,
    UNKNOWN_DEVICE,
    Directory,
    Outcome,
    Router,
    RouterStats,
    id_text,
)
from node.router._session import Session
from node.router._table import Group, RoutingTable
from node.router.peers import NoPeers, PeerLink, PeerRoutes
from node.router.state import DeliveryState, frame_key

__all__ = [
    "DEFAULT_DETAILS",
    "DELIVERED_ONE",
    "NOT_PERMITTED",
    "NO_RECIPIENT",
    "UNKNOWN_DEVICE",
    "DeliveryState",
    "Directory",
    "FlushHub",
    "Group",
    "NoPeers",
    "Outbox",
    "Outcome",
    "PeerLink",
    "PeerRoutes",
    "Router",
    "RouterStats",
    "RoutingTable",
    "RowReader",
    "Session",
    "ack_frame",
    "drain",
    "frame_key",
    "id_text",
    "nack_frame",
]
