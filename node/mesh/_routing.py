"""Cross-node routing: the router's peer seam (`PeerRoutes`), frames arriving over links, the
fan-out of broadcast and multicast, and the handoff of queued frames to a device's home node.

* A device's **home** is the owner in its replicated record (`VersionIndex.owners`): the node it
  last opened a session on. `route_for` answers the link to that node; the frame goes over it as
  the very bytes the sender's node received (`Frames`, with a hop count per frame).
* At the receiving node a frame goes to the device's session; when the device is not connected
  there and its record names yet another node (it moved), the frame is passed on while its hop
  count is below `hop_limit`; DURABLE frames whose device is offline are queued at the home node.
* **Broadcast / multicast**: the sender's node delivers to its own sessions and sends one `Fanout`
  to every linked peer with the cover set (`_linkstate.fan_out`): each node delivers to its own
  sessions once; a recently-seen cache drops a copy that arrives twice anyway.
* **Handoff**: DURABLE frames queued at a node that is not the device's home (the home was not
  reachable, or the device moved) are sent to the home node in batches; the home node commits them
  to its queue and acknowledges, then they are deleted here. At least once: a lost ack repeats a
  batch, and the device's DELIVERED for a duplicate finds nothing to delete.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import trio

from node.errors import StoreError
from node.logs import event, logger
from node.mesh._links import Link
from node.mesh._linkstate import RecentlySeen, fan_out
from node.mesh._peer_model import Fanout, Frames, Handoff, HandoffAck, PeerMessage
from node.mesh.state import VersionIndex
from node.router import PeerLink, frame_key, id_text
from store import mesh as rows_db
from store import queue as q
from wire import DecodeError
from wire.device import Flags, FrameType, FrameView, decode_frame_untrusted

if TYPE_CHECKING:
    from node.relay.service import RelayService
    from node.router import Session

log = logger("mesh")

_DURABLE = int(Flags.DURABLE)
_FANOUT_TYPES = (int(FrameType.BROADCAST), int(FrameType.MULTICAST))
SEEN_CAPACITY = 65_536
HANDOFF_MAX_BYTES = 1 << 20
HANDOFF_SCAN_S = 1.0


@dataclass(slots=True)
class RoutingStats:
    """Counters of cross-node routing."""

    forwarded: int = 0  # frames sent to a peer for one of its devices
    received: int = 0
    delivered: int = 0
    relayed: int = 0  # passed on to the device's new home
    queued: int = 0  # DURABLE frames from peers committed to this node's queue
    fanout_sent: int = 0
    fanout_received: int = 0
    fanout_delivered: int = 0
    handed_off: int = 0
    taken_over: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


class MeshRoutes:
    """Implements `node.router.PeerRoutes` over the mesh's links (see the module docstring)."""

    def __init__(
        self, me: str, index: VersionIndex, links: dict[str, Link], relay: RelayService, hop_limit: int
    ) -> None:
        self.me = me
        self.index = index
        self.links = links
        self.relay = relay
        self.hop_limit = hop_limit
        self.stats = RoutingStats()
        self._seen = RecentlySeen(SEEN_CAPACITY)
        self._durable: deque[tuple[Link, object]] = deque()  # DURABLE frames, handoffs, acks
        self._handoffs: dict[int, tuple[str, list[tuple[bytes, int]], Link]] = {}
        self._batch_ids = itertools.count(1)
        self._wake = trio.Event()
        self.handoff_due = True

    # ------------------------------------------------------------------ the router's seam
    def route_for(self, device_id: bytes) -> Link | None:
        """The link to the device's home node, when that is another node and it is linked."""
        owner = self.index.owners.get(device_id)
        if owner is None or owner == self.me:
            return None
        return self.links.get(owner)

    def forward(self, link: PeerLink, frame: bytes) -> bool:
        """Send the frame (unchanged bytes) to the peer; False when its link cannot take it."""
        peer = cast(Link, link)  # route_for only ever answers this node's own links
        if peer.send(Frames((frame,), b"\x01")):
            peer.frames_out += 1
            self.stats.forwarded += 1
            return True
        peer.drop("backlog_full")
        return False

    def fan_out(self, frame: bytes) -> int:
        """Send a broadcast or multicast frame to every linked node once; returns the copies sent."""
        self._seen.add(frame_key(frame))
        return self._spread(frame, 1, (), self.me, except_link=None)

    def _spread(
        self, frame: bytes, hops: int, covered: tuple[str, ...], origin: str, except_link: Link | None
    ) -> int:
        targets, cover = fan_out(self.me, self.links.keys(), covered)
        message = Fanout(frame, hops, tuple(cover), origin)
        sent = 0
        for peer in targets:
            link = self.links.get(peer)
            if link is not None and link is not except_link and link.send(message):
                sent += 1
        self.stats.fanout_sent += sent
        return sent

    # ------------------------------------------------------------------ frames from links
    def receive_frames(self, link: Link, message: Frames) -> bool:
        """Deliver frames for this node's devices (inline writes, as the relay's own reader does)."""
        hub = self.relay.hub
        hub.active = True
        durable: list[FrameView] = []
        try:
            for i, raw in enumerate(message.frames):
                hops = message.hops[i] if i < len(message.hops) else self.hop_limit
                frame = self._one(link, raw, hops)
                if frame is not None:
                    durable.append(frame)
        finally:
            hub.flush()
        link.frames_in += len(message.frames)
        if not durable:
            return True
        self._durable.append((link, durable))  # the message's credit returns once they are stored
        self._wake.set()
        return False

    def _one(self, link: Link, raw: bytes, hops: int) -> FrameView | None:
        """Route one frame; a DURABLE one that stays here is returned (to be stored first)."""
        self.stats.received += 1
        frame = self._decode(raw)
        if frame is None or frame.type != FrameType.DIRECT:
            self.stats.drop("bad_frame")
            return None
        session = self.relay.table.sessions.get(frame.destination)
        if session is None and self._relay_on(link, frame, hops):
            return None
        if frame.flags & _DURABLE:
            return frame
        if session is None:
            self.stats.drop("offline")
        elif session.outbox.offer(raw):
            self.stats.delivered += 1
        else:
            self.stats.drop("outbox_full")
        return None

    def _relay_on(self, link: Link, frame: FrameView, hops: int) -> bool:
        """Pass a frame on to the device's new home; False when it stays here."""
        owner = self.index.owners.get(frame.destination)
        if owner is None or owner == self.me:
            return False
        onward = self.links.get(owner)
        if onward is None or onward is link:
            return False
        if hops >= self.hop_limit:
            self.stats.drop("hop_limit")
            return True
        if onward.send(Frames((frame.raw,), bytes((hops + 1,)))):
            self.stats.relayed += 1
        else:
            self.stats.drop("backlog_full")
        return True

    def receive_fanout(self, link: Link, message: Fanout) -> bool:
        """A broadcast or multicast copy: deliver to this node's sessions once, pass it on."""
        self.stats.fanout_received += 1
        frame = self._decode(message.frame)
        if frame is None or frame.type not in _FANOUT_TYPES:
            self.stats.drop("bad_frame")
            return True
        if not self._seen.add(frame_key(frame.raw)):
            self.stats.drop("duplicate")
            return True
        hub = self.relay.hub
        hub.active = True
        try:
            for session in self._fanout_targets(frame):
                if session.outbox.offer(frame.raw):
                    self.stats.fanout_delivered += 1
                else:
                    self.stats.drop("outbox_full")
        finally:
            hub.flush()
        if message.hops < self.hop_limit:
            self._spread(message.frame, message.hops + 1, message.covered, message.origin, except_link=link)
        return True

    def _fanout_targets(self, frame: FrameView) -> list[Session]:
        table = self.relay.table
        if frame.type == FrameType.BROADCAST:
            members = table.by_network.get(frame.destination) or {}
            return [s for s in members if s.device_id != frame.source]
        group = table.groups.get(frame.destination)
        if group is None:
            return []
        networks = self.relay.router.directory.device_networks(frame.source)
        if networks is None or group.network_id not in networks:
            self.stats.drop("not_permitted")  # the sender is not in the group's network
            return []
        sessions = table.sessions
        return [s for d in group.members if d != frame.source and (s := sessions.get(d)) is not None]

    def _decode(self, raw: bytes) -> FrameView | None:
        try:
            return decode_frame_untrusted(raw, max_payload=self.relay.max_payload)
        except DecodeError:
            return None

    # ------------------------------------------------------------------ handoff messages
    def receive_handoff(self, link: Link, message: PeerMessage) -> bool:
        """Handoff batches and their acks are handled by `run` (store writes)."""
        self._durable.append((link, message))
        self._wake.set()
        return False

    # ------------------------------------------------------------------ the task
    async def run(self, handoff_batch: Callable[[], int]) -> None:
        """Commit DURABLE frames from peers, take and hand off queued frames, until cancelled."""
        while True:
            with trio.move_on_after(HANDOFF_SCAN_S) as idle:
                await self._wake.wait()
            self._wake = trio.Event()
            if idle.cancelled_caught:  # e.g. DURABLE broadcasts queued here for devices homed elsewhere
                self.handoff_due = True
            while self._durable:
                link, item = self._durable.popleft()
                try:
                    await self._durable_item(link, item)
                except StoreError as exc:  # not acknowledged: a handoff is sent again later
                    self.stats.drop("store_error")
                    event(log, 40, "mesh routing: store write failed", error=exc.detail)
                finally:
                    link.stream.consumed()
            if self.handoff_due:
                self.handoff_due = False
                try:
                    await self._hand_off(handoff_batch())
                except StoreError as exc:
                    event(log, 40, "mesh handoff: store read failed", error=exc.detail)

    def wake_handoff(self) -> None:
        """Owners changed or a link opened: look for queued frames whose home is elsewhere."""
        self.handoff_due = True
        self._wake.set()

    async def _durable_item(self, link: Link, item: object) -> None:
        if isinstance(item, list):
            for frame in item:
                await self._commit([frame], frame.destination)
        elif isinstance(item, Handoff):
            device = _id_bytes(item.device_id)
            # (a queued row's frame is addressed to the device, or to its network or group)
            frames = [f for raw in item.frames if (f := self._decode(raw)) is not None]
            if device is None or len(frames) != len(item.frames):
                self.stats.drop("bad_handoff")  # not acknowledged: the sender keeps its rows
                return
            await self._commit(frames, device)
            self.stats.taken_over += len(frames)
            link.send(HandoffAck(item.batch))
        elif isinstance(item, HandoffAck):
            await self._acked(item.batch)

    async def _commit(self, frames: list[FrameView], device: bytes) -> None:
        """Queue DURABLE frames here (committed), then push them to the device if it is online."""
        text = id_text(device)
        items = [q.EnqueueItem(f.raw, f.source, f.message_id, devices=(text,)) for f in frames]
        if not items:
            return
        try:
            results = await self.relay.queue.enqueue(items)
        except Exception as exc:
            self.stats.drop("store_error", len(items))
            event(log, 40, "could not queue frames from a peer", error=str(exc))
            return
        for frame, result in zip(frames, results, strict=True):
            self.relay.router.deliver_committed(frame, result)
        self.stats.queued += len(items)
        self.wake_handoff()  # the device may have moved on meanwhile

    async def _hand_off(self, max_rows: int) -> None:
        """Send queued frames of devices whose home is another linked node (one batch each)."""
        pending = {device for device, _, _ in self._handoffs.values()}
        for device in self.relay.storage.read(rows_db.queued_devices):
            raw = _id_bytes(device)
            link = self.route_for(raw) if raw is not None else None
            if link is None or device in pending or device in self.relay.table.by_text:
                continue
            rows, more = self.relay.queue.pending(device, 0, max_rows=max_rows, max_bytes=HANDOFF_MAX_BYTES)
            if not rows:
                continue
            batch = next(self._batch_ids)
            if link.send(Handoff(batch, device, tuple(frame for _, frame in rows))):
                self._handoffs[batch] = (device, [frame_key(frame) for _, frame in rows], link)
                self.handoff_due |= more

    async def _acked(self, batch: int) -> None:
        entry = self._handoffs.pop(batch, None)
        if entry is None:
            return
        device, keys, _ = entry
        await self.relay.storage.write(q.delete_delivered, [(device, source, mid) for source, mid in keys])
        self.stats.handed_off += len(keys)
        self.wake_handoff()

    def link_closed(self, link: Link) -> None:
        """Forget handoff batches in flight on a closed link (they are sent again)."""
        for batch in [b for b, (_, _, via) in self._handoffs.items() if via is link]:
            del self._handoffs[batch]
        self.wake_handoff()

    def statistics(self) -> dict[str, Any]:
        s = self.stats
        out = {k: getattr(s, k) for k in RoutingStats.__slots__ if k != "dropped"}
        out["dropped"] = dict(s.dropped)
        out["handoffs_in_flight"] = len(self._handoffs)
        return out


def _id_bytes(text: str) -> bytes | None:
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        return None
