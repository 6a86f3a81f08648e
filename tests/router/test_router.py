"""Routing decisions without sockets: reach, fan-out, anycast policies, durable plans, peers."""

from __future__ import annotations

import os

import pytest

from node.router import Router, RoutingTable, Session
from store.queue import EnqueueItem, EnqueueResult
from tests.router.conftest import FakeDirectory, MakeSession, new_id
from wire.device import (
    AckStatus,
    AnycastPolicy,
    Flags,
    FrameType,
    NackReason,
    capability_id,
    decode_frame_untrusted,
    encode_frame,
)

NET_A, NET_B = new_id(), new_id()


def frame(sender: Session, ftype: int, destination: bytes, *, flags: int = 0, payload: bytes = b"hi"):  # type: ignore[no-untyped-def]
    raw = encode_frame(
        ftype,
        message_id=int.from_bytes(os.urandom(4)),
        source=sender.device_id,
        destination=destination,
        payload=payload,
        flags=flags,
    )
    return decode_frame_untrusted(raw, max_payload=1 << 20)


def test_direct_puts_the_received_object_into_the_outbox(router: Router, make_session: MakeSession) -> None:
    a, b = make_session(networks=[NET_A]), make_session(networks=[NET_A])
    f = frame(a, FrameType.DIRECT, b.device_id)
    assert router.route(a, f) == (AckStatus.DELIVERED, 1)
    assert b.outbox.frames[0] is f.raw


def test_direct_refusals(router: Router, make_session: MakeSession, directory: FakeDirectory) -> None:
    a = make_session(networks=[NET_A], reach=[NET_A])
    other_net = make_session(networks=[NET_B])
    offline = new_id()
    directory.devices[offline] = frozenset([NET_A])
    offline_elsewhere = new_id()
    directory.devices[offline_elsewhere] = frozenset([NET_B])
    assert router.route(a, frame(a, FrameType.DIRECT, other_net.device_id)) == (-NackReason.NOT_PERMITTED, 0)
    assert router.route(a, frame(a, FrameType.DIRECT, new_id())) == (-NackReason.UNKNOWN_DEVICE, 0)
    assert router.route(a, frame(a, FrameType.DIRECT, offline)) == (-NackReason.NO_RECIPIENT, 0)
    assert router.route(a, frame(a, FrameType.DIRECT, offline_elsewhere)) == (-NackReason.NOT_PERMITTED, 0)
    assert not other_net.outbox.frames


def test_service_reach_crosses_networks(router: Router, make_session: MakeSession) -> None:
    service = make_session(networks=[NET_A], reach=None)
    b = make_session(networks=[NET_B])
    assert router.route(service, frame(service, FrameType.DIRECT, b.device_id))[0] == AckStatus.DELIVERED


def test_full_outbox_drops_best_effort_and_counts(router: Router, make_session: MakeSession) -> None:
    a, b = make_session(networks=[NET_A]), make_session(networks=[NET_A], outbox=(1, 1000))
    assert router.route(a, frame(a, FrameType.DIRECT, b.device_id))[0] == AckStatus.DELIVERED
    assert router.route(a, frame(a, FrameType.DIRECT, b.device_id)) == (-NackReason.RESOURCE_EXHAUSTED, 0)
    assert router.stats.dropped == {"outbox_full": 1}


def test_broadcast_reaches_the_network_except_the_sender(router: Router, make_session: MakeSession) -> None:
    a = make_session(networks=[NET_A])
    members = [make_session(networks=[NET_A, NET_B]) for _ in range(3)]
    outsider = make_session(networks=[NET_B])
    f = frame(a, FrameType.BROADCAST, NET_A)
    assert router.route(a, f) == (AckStatus.DELIVERED, 3)
    assert all(m.outbox.frames == [f.raw] and m.outbox.frames[0] is f.raw for m in members)
    assert not a.outbox.frames
    assert not outsider.outbox.frames


def test_broadcast_refusals(router: Router, make_session: MakeSession) -> None:
    a = make_session(networks=[NET_A], reach=[NET_A])
    assert router.route(a, frame(a, FrameType.BROADCAST, NET_B)) == (-NackReason.NOT_PERMITTED, 0)
    assert router.route(a, frame(a, FrameType.BROADCAST, NET_A)) == (-NackReason.NO_RECIPIENT, 0)


def test_multicast_reaches_online_members_only(
    router: Router, table: RoutingTable, make_session: MakeSession
) -> None:
    a, m1, m2, non_member = (make_session(networks=[NET_A]) for _ in range(4))
    group = new_id()
    for s in (a, m1, m2):
        table.join(group, NET_A, "kitchen", s.device_id, s.device_text)
    table.join(group, NET_A, "kitchen", new_id(), "offline-member")
    f = frame(a, FrameType.MULTICAST, group)
    assert router.route(a, f) == (AckStatus.DELIVERED, 2)
    assert m1.outbox.frames == [f.raw] and m2.outbox.frames == [f.raw]
    assert not non_member.outbox.frames
    assert router.route(a, frame(a, FrameType.MULTICAST, new_id())) == (-NackReason.NO_RECIPIENT, 0)
    outsider = make_session(networks=[NET_B], reach=[NET_B])
    assert router.route(outsider, frame(outsider, FrameType.MULTICAST, group)) == (
        -NackReason.NOT_PERMITTED,
        0,
    )


def test_table_leave_and_forget(table: RoutingTable, make_session: MakeSession) -> None:
    s = make_session(networks=[NET_A])
    g1, g2 = new_id(), new_id()
    table.join(g1, NET_A, "one", s.device_id, s.device_text)
    table.join(g2, NET_A, "two", s.device_id, s.device_text)
    assert s.groups == {g1, g2}
    assert table.leave(g1, s.device_id)
    assert not table.leave(g1, s.device_id)
    table.forget_device(s.device_id)
    assert table.groups == {}


def anycast(router: Router, sender: Session, cap: str, policy: AnycastPolicy) -> Session | None:
    f = frame(sender, FrameType.ANYCAST, capability_id(cap), flags=int(policy) << 8)
    before = {id(s): len(s.outbox.frames) for s in router.table.sessions.values()}
    code, _ = router.route(sender, f)
    if code != AckStatus.DELIVERED:
        return None
    return next(s for s in router.table.sessions.values() if len(s.outbox.frames) > before[id(s)])


def test_anycast_round_robin_cycles_over_permitted_candidates(
    router: Router, make_session: MakeSession
) -> None:
    sender = make_session(networks=[NET_A], reach=[NET_A], caps=("tts",))
    speakers = [make_session(networks=[NET_A], caps=("tts",)) for _ in range(3)]
    make_session(networks=[NET_B], caps=("tts",))  # not reachable by the sender
    chosen = [anycast(router, sender, "tts", AnycastPolicy.ROUND_ROBIN) for _ in range(6)]
    assert chosen == speakers + speakers  # never the sender, never the other network


def test_anycast_least_outstanding_prefers_the_emptiest(router: Router, make_session: MakeSession) -> None:
    sender = make_session(networks=[NET_A])
    busy, idle = make_session(networks=[NET_A], caps=("gpu",)), make_session(networks=[NET_A], caps=("gpu",))
    busy.outbox.offer(b"x")
    busy.outbox.offer(b"y")
    assert anycast(router, sender, "gpu", AnycastPolicy.LEAST_OUTSTANDING) is idle
    assert anycast(router, sender, "gpu", AnycastPolicy.LEAST_OUTSTANDING) is idle  # 1 < 2
    assert anycast(router, sender, "gpu", AnycastPolicy.LEAST_OUTSTANDING) in (busy, idle)


def test_anycast_server_default_and_fallback_when_full(router: Router, make_session: MakeSession) -> None:
    sender = make_session(networks=[NET_A])
    full = make_session(networks=[NET_A], caps=("cam",), outbox=(1, 1000))
    free = make_session(networks=[NET_A], caps=("cam",))
    full.outbox.offer(b"x")
    router.anycast_default = AnycastPolicy.ROUND_ROBIN
    assert anycast(router, sender, "cam", AnycastPolicy.SERVER_DEFAULT) is free
    assert anycast(router, sender, "nothing", AnycastPolicy.SERVER_DEFAULT) is None


def test_plan_durable_targets(
    router: Router, table: RoutingTable, make_session: MakeSession, directory: FakeDirectory
) -> None:
    a = make_session(networks=[NET_A], reach=[NET_A])
    b = make_session(networks=[NET_A])
    offline = new_id()
    directory.devices[offline] = frozenset([NET_A])
    durable = int(Flags.DURABLE)
    item = router.plan_durable(a, frame(a, FrameType.DIRECT, b.device_id, flags=durable))
    assert isinstance(item, EnqueueItem) and item.devices == (b.device_text,)
    item = router.plan_durable(a, frame(a, FrameType.DIRECT, offline, flags=durable))
    assert isinstance(item, EnqueueItem) and len(item.devices) == 1
    assert router.plan_durable(a, frame(a, FrameType.DIRECT, new_id(), flags=durable)) == (
        -NackReason.UNKNOWN_DEVICE,
        0,
    )
    item = router.plan_durable(a, frame(a, FrameType.BROADCAST, NET_A, flags=durable))
    assert isinstance(item, EnqueueItem) and item.network_id and item.exclude == a.device_text
    assert router.plan_durable(a, frame(a, FrameType.BROADCAST, NET_B, flags=durable)) == (
        -NackReason.NOT_PERMITTED,
        0,
    )
    group = new_id()
    table.join(group, NET_A, "g", offline, "offline-text")
    item = router.plan_durable(a, frame(a, FrameType.MULTICAST, group, flags=durable))
    assert isinstance(item, EnqueueItem) and item.devices == ("offline-text",)
    assert router.plan_durable(a, frame(a, FrameType.ANYCAST, capability_id("none"), flags=durable)) == (
        -NackReason.NO_RECIPIENT,
        0,
    )


def test_deliver_committed_pushes_live_or_leaves_it_queued(router: Router, make_session: MakeSession) -> None:
    a = make_session(networks=[NET_A])
    online = make_session(networks=[NET_A])
    online.delivery.drain_done(reached_end=True)
    behind = make_session(networks=[NET_A])  # has not drained yet
    f = frame(a, FrameType.BROADCAST, NET_A, flags=int(Flags.DURABLE))
    result = EnqueueResult(queued=[(online.device_text, 10), (behind.device_text, 11), ("offline", 12)])
    assert router.deliver_committed(f, result) == (AckStatus.QUEUED, 3)
    assert online.outbox.frames == [f.raw] and online.outbox.frames[0] is f.raw
    assert online.delivery.delivered((f.source, f.message_id)) == 10
    assert not behind.outbox.frames
    result = EnqueueResult(queued=[(online.device_text, 13)])
    g = frame(a, FrameType.DIRECT, online.device_id, flags=int(Flags.DURABLE))
    assert router.deliver_committed(g, result) == (AckStatus.DELIVERED, 1)


@pytest.mark.parametrize(
    ("result", "outcome"),
    [
        (EnqueueResult(refused=["x"]), (-NackReason.QUEUE_FULL, 0)),
        (EnqueueResult(), (-NackReason.NO_RECIPIENT, 0)),
    ],
)
def test_deliver_committed_nothing_stored(
    router: Router, make_session: MakeSession, result: EnqueueResult, outcome: tuple[int, int]
) -> None:
    a = make_session(networks=[NET_A])
    assert (
        router.deliver_committed(frame(a, FrameType.BROADCAST, NET_A, flags=int(Flags.DURABLE)), result)
        == outcome
    )


class OnePeer:
    def __init__(self, device: bytes, accept: bool) -> None:
        self.device, self.accept, self.sent = device, accept, []  # type: ignore[var-annotated]

    @property
    def peer_id(self) -> str:
        return "peer-1"

    def route_for(self, device_id: bytes) -> OnePeer | None:
        return self if device_id == self.device else None

    def forward(self, link: object, frame: bytes) -> bool:
        self.sent.append(frame)
        return self.accept


@pytest.mark.parametrize("accept", [True, False])
def test_peer_seam_forwards_the_same_object(
    table: RoutingTable, directory: FakeDirectory, make_session: MakeSession, accept: bool
) -> None:
    remote = new_id()
    peer = OnePeer(remote, accept)
    router = Router(table, directory, peers=peer)
    a = make_session(networks=[NET_A])
    f = frame(a, FrameType.DIRECT, remote)
    expected = (AckStatus.FORWARDED, 1) if accept else (-NackReason.UNAVAILABLE, 0)
    assert router.route(a, f) == expected
    assert peer.sent[0] is f.raw


def test_replaced_session_keeps_table_consistent(table: RoutingTable, make_session: MakeSession) -> None:
    first = make_session(networks=[NET_A], caps=("tts",))
    second = make_session(networks=[NET_A], caps=("tts",), add=False)
    second.device_id, second.device_text = first.device_id, first.device_text
    assert table.add(second) is first
    assert not table.remove(first)  # the old session's cleanup must not remove the new route
    assert table.sessions[first.device_id] is second
    assert table.by_capability[capability_id("tts")] == [second]
    assert table.remove(second)
    assert not table.sessions and not table.by_network and not table.by_capability
