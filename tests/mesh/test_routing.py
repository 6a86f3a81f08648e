"""Cross-node routing decisions with in-memory links: the home node's link, relaying to a moved
device's new home within the hop limit, broadcast and multicast copies delivered once per node."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from node.mesh._peer_model import Fanout, Frames, PeerMessage
from node.mesh._routing import MeshRoutes
from node.mesh.state import DEVICE, Meta, VersionIndex
from node.router import DeliveryState, FlushHub, Outbox, Router, RoutingTable, Session
from wire.device import AckStatus, FrameType, encode_frame

NET = uuid.uuid4().bytes
HOP_LIMIT = 3


@dataclass
class FakeLink:
    peer_id: str
    sent: list[PeerMessage] = field(default_factory=list)
    frames_out: int = 0
    frames_in: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def send(self, message: PeerMessage) -> bool:
        self.sent.append(message)
        return True

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


class Directory:
    def __init__(self, networks: dict[bytes, frozenset[bytes]]) -> None:
        self.networks = networks

    def device_networks(self, device_id: bytes) -> frozenset[bytes] | None:
        return self.networks.get(device_id)


@dataclass
class FakeRelay:
    table: RoutingTable = field(default_factory=RoutingTable)
    hub: FlushHub = field(default_factory=FlushHub)
    max_payload: int = 65536
    router: Any = None


def session(table: RoutingTable, device: bytes) -> Session:
    s = Session(
        device_id=device, device_text=str(uuid.UUID(bytes=device)), session_id="s", networks=frozenset({NET}),
        reach=None, capabilities=(), outbox=Outbox(100, 1 << 20), delivery=DeliveryState(10),
        close=lambda code, reason: None,
    )  # fmt: skip
    table.add(s)
    return s


def node(
    me: str, peers: list[str], homes: dict[bytes, str]
) -> tuple[MeshRoutes, FakeRelay, dict[str, FakeLink]]:
    index = VersionIndex()
    for device, owner in homes.items():
        index.put(Meta(DEVICE, str(uuid.UUID(bytes=device)), 1, owner, owner, False))
    links = {p: FakeLink(p) for p in peers}
    relay = FakeRelay()
    relay.router = Router(relay.table, Directory({d: frozenset({NET}) for d in homes}))
    routes = MeshRoutes(me, index, links, relay, HOP_LIMIT)  # type: ignore[arg-type]
    relay.router.peers = routes
    return routes, relay, links


def frame(kind: int, source: bytes, destination: bytes, message_id: int = 1) -> bytes:
    return encode_frame(kind, message_id=message_id, source=source, destination=destination, payload=b"hi")


def test_a_frame_for_a_device_elsewhere_goes_to_its_home_link() -> None:
    sender, remote = uuid.uuid4().bytes, uuid.uuid4().bytes
    routes, relay, links = node("a", ["b", "c"], {sender: "a", remote: "c"})
    s = session(relay.table, sender)
    raw = frame(FrameType.DIRECT, sender, remote)
    view = decode(raw)
    assert relay.router.route(s, view) == (AckStatus.FORWARDED, 1)
    assert links["c"].sent == [Frames((raw,), b"\x01")] and links["b"].sent == []
    assert routes.route_for(sender) is None  # a local device is never routed to a peer


def test_a_moved_device_is_followed_within_the_hop_limit() -> None:
    device = uuid.uuid4().bytes
    routes, _, links = node("b", ["a", "c"], {device: "c"})  # it moved on to C
    raw = frame(FrameType.DIRECT, uuid.uuid4().bytes, device)
    routes.receive_frames(links["a"], Frames((raw,), b"\x01"))  # type: ignore[arg-type]
    assert links["c"].sent == [Frames((raw,), b"\x02")]
    routes.receive_frames(links["a"], Frames((raw,), bytes((HOP_LIMIT,))))  # type: ignore[arg-type]
    assert len(links["c"].sent) == 1 and routes.stats.dropped == {"hop_limit": 1}


def test_a_frame_for_a_connected_device_is_delivered_here() -> None:
    device = uuid.uuid4().bytes
    routes, relay, links = node("b", ["a"], {device: "a"})  # the index lags: the session counts
    s = session(relay.table, device)
    raw = frame(FrameType.DIRECT, uuid.uuid4().bytes, device)
    assert routes.receive_frames(links["a"], Frames((raw,), b"\x01"))  # type: ignore[arg-type]
    assert s.outbox.frames == [raw] and links["a"].sent == []


def test_broadcast_reaches_each_node_once_and_each_device_once() -> None:
    members = [uuid.uuid4().bytes for _ in range(3)]
    homes = dict(zip(members, ["a", "b", "c"], strict=True))
    nodes = {n: node(n, [p for p in "abc" if p != n], homes) for n in "abc"}
    sessions = {n: session(nodes[n][1].table, d) for d, n in homes.items()}
    raw = frame(FrameType.BROADCAST, members[0], NET)
    outcome = nodes["a"][1].router.route(sessions["a"], decode(raw))
    assert outcome == (AckStatus.FORWARDED, 2)  # no local receiver; sent to two nodes
    pending = [(n, msg) for n, link in nodes["a"][2].items() for msg in link.sent]
    while pending:  # deliver every copy, including any a node passes on
        at, message = pending.pop()
        routes, _, links = nodes[at]
        before = {p: len(x.sent) for p, x in links.items()}
        routes.receive_fanout(links["a"], message)  # type: ignore[arg-type]
        pending += [(p, m) for p, x in links.items() for m in x.sent[before[p] :]]
    assert [len(sessions[n].outbox.frames) for n in "abc"] == [0, 1, 1]
    again = next(m for m in nodes["a"][2]["b"].sent if isinstance(m, Fanout))
    nodes["b"][0].receive_fanout(nodes["b"][2]["c"], again)  # type: ignore[arg-type]
    assert len(sessions["b"].outbox.frames) == 1 and nodes["b"][0].stats.dropped == {"duplicate": 1}


def test_multicast_copies_go_only_to_group_members_of_the_senders_network() -> None:
    sender, member, stranger = (uuid.uuid4().bytes for _ in range(3))
    routes, relay, links = node("b", ["a"], {sender: "a", member: "b"})
    group = uuid.uuid4().bytes
    relay.table.join(group, NET, "g", member, str(uuid.UUID(bytes=member)))
    s = session(relay.table, member)
    routes.receive_fanout(links["a"], Fanout(frame(FrameType.MULTICAST, sender, group), 1, ("a", "b"), "a"))  # type: ignore[arg-type]
    assert len(s.outbox.frames) == 1
    forged = frame(FrameType.MULTICAST, stranger, group, message_id=2)  # not registered in NET
    routes.receive_fanout(links["a"], Fanout(forged, 1, ("a", "b"), "a"))  # type: ignore[arg-type]
    assert len(s.outbox.frames) == 1 and routes.stats.dropped == {"not_permitted": 1}


def decode(raw: bytes) -> Any:
    from wire.device import decode_frame_untrusted

    return decode_frame_untrusted(raw, max_payload=65536)
