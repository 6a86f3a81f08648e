"""Routing decisions: direct, broadcast, multicast, anycast; best-effort now, DURABLE via the queue.

The router never waits and never copies: it offers the received `bytes` object (`FrameView.raw`)
to each destination's outbox and reports an outcome `(code, recipients)`, where a positive code
is an AckStatus and a negative one is minus a NackReason. The caller turns outcomes into ACK and
NACK frames. DURABLE frames take two steps around the commit that stores them:
`plan_durable` (who receives it, or why nobody may) and `deliver_committed` (live pushes).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol

from node.router._session import Session
from node.router._table import RoutingTable
from node.router.peers import NoPeers, PeerRoutes
from store.queue import EnqueueItem, EnqueueResult
from wire.device import AckStatus, AnycastPolicy, FrameType, FrameView, NackReason

Outcome = tuple[int, int]

DELIVERED_ONE: Outcome = (AckStatus.DELIVERED, 1)
FORWARDED_ONE: Outcome = (AckStatus.FORWARDED, 1)
UNKNOWN_DEVICE: Outcome = (-NackReason.UNKNOWN_DEVICE, 0)
NOT_PERMITTED: Outcome = (-NackReason.NOT_PERMITTED, 0)
NO_RECIPIENT: Outcome = (-NackReason.NO_RECIPIENT, 0)
OUTBOX_FULL: Outcome = (-NackReason.RESOURCE_EXHAUSTED, 0)
QUEUE_FULL: Outcome = (-NackReason.QUEUE_FULL, 0)
PEER_UNAVAILABLE: Outcome = (-NackReason.UNAVAILABLE, 0)
# Plain ints for the per-frame comparisons (comparing with an IntEnum member costs more).
_DIRECT = int(FrameType.DIRECT)
_BROADCAST = int(FrameType.BROADCAST)
_MULTICAST = int(FrameType.MULTICAST)


class Directory(Protocol):
    """Registered devices that are not connected here (the store)."""

    def device_networks(self, device_id: bytes) -> frozenset[bytes] | None:
        """The networks of a registered device, or None when no such device is registered."""
        ...


def id_text(raw: bytes) -> str:
    """The canonical text form of a 16-byte id."""
    return str(uuid.UUID(bytes=raw))


@dataclass(slots=True)
class RouterStats:
    """Counters; `dropped` is keyed by reason."""

    routed: dict[int, int] = field(default_factory=lambda: {t: 0 for t in (0x10, 0x11, 0x12, 0x13)})
    delivered: int = 0  # frames put into a destination outbox by reference
    live_durable: int = 0  # DURABLE frames pushed right after their commit
    forwarded: int = 0
    queued: int = 0  # rows stored in offline queues
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


class Router:
    """Routes frames between the sessions of a RoutingTable (see the module docstring)."""

    def __init__(
        self,
        table: RoutingTable,
        directory: Directory,
        *,
        peers: PeerRoutes | None = None,
        anycast_default: AnycastPolicy = AnycastPolicy.ROUND_ROBIN,
    ) -> None:
        self.table = table
        self.directory = directory
        self.peers: PeerRoutes = peers or NoPeers()
        self.anycast_default = anycast_default
        self.stats = RouterStats()

    # ------------------------------------------------------------------ best effort
    def route(self, sender: Session, frame: FrameView) -> Outcome:
        """Route a data frame that is not DURABLE: online destinations only."""
        ftype = frame.type
        stats = self.stats
        stats.routed[ftype] += 1
        if ftype == _DIRECT:  # the hot path, inline: one dict lookup, one reach check, one offer
            dest = self.table.sessions.get(frame.destination)
            if dest is None:
                return self._not_here(sender, frame)
            reach = sender.reach
            if reach is not None and reach.isdisjoint(dest.networks):
                return NOT_PERMITTED
            if dest.outbox.offer(frame.raw):
                stats.delivered += 1
                return DELIVERED_ONE
            stats.drop("outbox_full")
            return OUTBOX_FULL
        if ftype == _BROADCAST:
            return self._fan_out(sender, frame, self._broadcast_targets(sender, frame.destination))
        if ftype == _MULTICAST:
            return self._fan_out(sender, frame, self._multicast_targets(sender, frame.destination))
        return self._anycast(sender, frame)

    def _not_here(self, sender: Session, frame: FrameView) -> Outcome:
        link = self.peers.route_for(frame.destination)
        if link is not None:
            if self.peers.forward(link, frame.raw):
                self.stats.forwarded += 1
                return FORWARDED_ONE
            self.stats.drop("peer_unavailable")
            return PEER_UNAVAILABLE
        networks = self.directory.device_networks(frame.destination)
        if networks is None:
            return UNKNOWN_DEVICE
        if not sender.may_reach(networks):
            return NOT_PERMITTED
        self.stats.drop("offline")
        return NO_RECIPIENT

    def _broadcast_targets(self, sender: Session, network: bytes) -> list[Session] | Outcome:
        if not sender.may_reach(frozenset((network,))):
            return NOT_PERMITTED
        members = self.table.by_network.get(network)
        return [s for s in members if s is not sender] if members else []

    def _multicast_targets(self, sender: Session, group_id: bytes) -> list[Session] | Outcome:
        group = self.table.groups.get(group_id)
        if group is None:
            return []
        if not sender.may_reach(frozenset((group.network_id,))):
            return NOT_PERMITTED
        sessions = self.table.sessions
        return [s for d in group.members if (s := sessions.get(d)) is not None and s is not sender]

    def _fan_out(self, sender: Session, frame: FrameView, targets: list[Session] | Outcome) -> Outcome:
        if isinstance(targets, tuple):
            return targets
        raw = frame.raw
        reached = sum(1 for s in targets if s.outbox.offer(raw))
        self.stats.delivered += reached
        if reached < len(targets):
            self.stats.drop("outbox_full", len(targets) - reached)
        nodes = self.peers.fan_out(raw)  # the devices on other nodes get it there
        self.stats.forwarded += nodes
        if reached:
            return (AckStatus.DELIVERED, reached)
        if nodes:
            return (AckStatus.FORWARDED, nodes)
        if targets:
            return OUTBOX_FULL
        self.stats.drop("no_recipient")
        return NO_RECIPIENT

    def _anycast(self, sender: Session, frame: FrameView) -> Outcome:
        candidates = self._anycast_candidates(sender, frame)
        raw = frame.raw
        for session in candidates:  # the policy's order; the first with room takes it
            if session.outbox.offer(raw):
                self._chosen(frame.destination, session)
                self.stats.delivered += 1
                return DELIVERED_ONE
        if candidates:
            self.stats.drop("outbox_full")
            return OUTBOX_FULL
        self.stats.drop("no_recipient")
        return NO_RECIPIENT

    def _anycast_candidates(self, sender: Session, frame: FrameView) -> list[Session]:
        """Permitted online devices with the capability, in the order the policy prefers them."""
        offered = self.table.by_capability.get(frame.destination)
        if not offered:
            return []
        start = self.table.rr_next.get(frame.destination, 0) % len(offered)
        rotated = offered[start:] + offered[:start]
        permitted = [s for s in rotated if s is not sender and sender.may_reach(s.networks)]
        policy = frame.anycast_policy or self.anycast_default
        if policy == AnycastPolicy.LEAST_OUTSTANDING:
            permitted.sort(key=lambda s: s.outstanding)  # stable: ties keep the rotation
        return permitted

    def _chosen(self, capability: bytes, session: Session) -> None:
        offered = self.table.by_capability[capability]
        self.table.rr_next[capability] = offered.index(session) + 1

    # ------------------------------------------------------------------ durable
    def plan_durable(self, sender: Session, frame: FrameView) -> EnqueueItem | Outcome:
        """Who must store a DURABLE frame (an EnqueueItem), or the outcome when nobody may."""
        ftype = frame.type
        self.stats.routed[ftype] += 1
        dest = frame.destination
        if ftype == FrameType.DIRECT:
            return self._plan_direct(sender, frame)
        if ftype == FrameType.BROADCAST:
            if not sender.may_reach(frozenset((dest,))):
                return NOT_PERMITTED
            return _item(frame, network_id=id_text(dest), exclude=sender.device_text)
        if ftype == FrameType.MULTICAST:
            group = self.table.groups.get(dest)
            if group is None:
                return NO_RECIPIENT
            if not sender.may_reach(frozenset((group.network_id,))):
                return NOT_PERMITTED
            return _item(frame, devices=tuple(group.members.values()), exclude=sender.device_text)
        candidates = self._anycast_candidates(sender, frame)
        if not candidates:
            return NO_RECIPIENT
        self._chosen(dest, candidates[0])
        return _item(frame, devices=(candidates[0].device_text,))

    def _plan_direct(self, sender: Session, frame: FrameView) -> EnqueueItem | Outcome:
        dest = self.table.sessions.get(frame.destination)
        if dest is not None:
            networks = dest.networks
        else:
            link = self.peers.route_for(frame.destination)
            if link is not None:
                return FORWARDED_ONE if self.peers.forward(link, frame.raw) else PEER_UNAVAILABLE
            found = self.directory.device_networks(frame.destination)
            if found is None:
                return UNKNOWN_DEVICE
            networks = found
        if not sender.may_reach(networks):
            return NOT_PERMITTED
        text = dest.device_text if dest is not None else id_text(frame.destination)
        return _item(frame, devices=(text,))

    def deliver_committed(self, frame: FrameView, result: EnqueueResult) -> Outcome:
        """Push a just-committed DURABLE frame to its online receivers; the sender's outcome."""
        queued = result.queued
        self.stats.queued += len(queued)
        if result.refused:
            self.stats.drop("queue_full", len(result.refused))
        if not queued:
            return QUEUE_FULL if result.refused else NO_RECIPIENT
        key = (frame.source, frame.message_id)
        raw = frame.raw
        live = 0
        by_text = self.table.by_text
        for device_text, seq in queued:
            session = by_text.get(device_text)
            if session is None:
                continue
            delivery = session.delivery
            if delivery.may_push_live(seq):
                if session.outbox.offer(raw):
                    delivery.pushed_live(seq, key)
                    live += 1
                    continue
                delivery.fell_behind()
            if delivery.behind:
                session.outbox.wake()  # its writer drains when there is room
        self.stats.live_durable += live
        return (AckStatus.DELIVERED if live == len(queued) else AckStatus.QUEUED, len(queued))


def _item(
    frame: FrameView,
    *,
    devices: tuple[str, ...] = (),
    network_id: str | None = None,
    exclude: str | None = None,
) -> EnqueueItem:
    return EnqueueItem(
        frame.raw, frame.source, frame.message_id, devices=devices, network_id=network_id, exclude=exclude
    )
