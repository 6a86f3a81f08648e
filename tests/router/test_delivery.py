"""The delivery cursor (node.router.state) and the drain, against a model of the store.

The state machine commits rows for one receiver from several senders, runs their live pushes in
any order across senders (Trio does not promise the wake-up order of tasks whose writes shared a
commit) but in order per sender, drains, sends, confirms and deletes in any interleaving. It checks
that no row reaches the session twice, that each sender's rows arrive in order, and that once
things settle every row has arrived.
"""

from __future__ import annotations

import struct

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from node.router import DeliveryState, Outbox, Session, drain, frame_key

SENDERS = [bytes([i]) * 16 for i in range(1, 4)]


def make_frame(sender: bytes, message_id: int) -> bytes:
    return struct.pack("!BBHQ16s16sI", 1, 0x10, 0x0002, message_id, sender, b"\xbb" * 16, 0)


class DeliveryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store: dict[int, bytes] = {}  # committed rows: seq -> frame
        self.next_seq = 1
        self.next_mid = {s: 1 for s in SENDERS}
        self.pending_live: dict[bytes, list[tuple[int, bytes]]] = {s: [] for s in SENDERS}
        self.confirmed_pending: list[tuple[int, tuple[bytes, int]]] = []
        self.session = Session(
            device_id=b"\xbb" * 16,
            device_text="receiver",
            session_id="s-1",
            networks=frozenset(),
            reach=None,
            capabilities=(),
            outbox=Outbox(3, 1 << 20),
            delivery=DeliveryState(4),
            close=lambda code, reason: None,
        )
        self.received: list[bytes] = []  # what the writer sent, in order
        self.seen_keys: set[tuple[bytes, int]] = set()

    # -- the store's side
    @rule(sender=st.sampled_from(SENDERS), count=st.integers(1, 3))
    def commit(self, sender: bytes, count: int) -> None:
        """A sender's batch commits (only after its previous batch was pushed: its reader waits)."""
        if self.pending_live[sender]:
            return
        for _ in range(count):
            frame = make_frame(sender, self.next_mid[sender])
            self.next_mid[sender] += 1
            self.store[self.next_seq] = frame
            self.pending_live[sender].append((self.next_seq, frame))
            self.next_seq += 1

    @rule(sender=st.sampled_from(SENDERS))
    def live_push(self, sender: bytes) -> None:
        """The sender's task wakes after its commit and pushes its batch (no yield in between)."""
        batch, self.pending_live[sender] = self.pending_live[sender], []
        d, box = self.session.delivery, self.session.outbox
        for seq, frame in batch:
            if d.may_push_live(seq):
                if box.offer(frame):
                    d.pushed_live(seq, frame_key(frame))
                    continue
                d.fell_behind()

    def _read(self, after: int, max_rows: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], bool]:
        rows = sorted((s, f) for s, f in self.store.items() if s > after)
        return rows[:max_rows], len(rows) > max_rows

    @rule()
    def drain(self) -> None:
        drain(self.session, self._read, lambda frame: frame)

    @rule()
    def writer_sends(self) -> None:
        box = self.session.outbox
        frames, box.frames, box.bytes = box.frames, [], 0
        self.received += frames

    @rule(data=st.data())
    def receiver_confirms(self, data: st.DataObject) -> None:
        unconfirmed = [f for f in self.received if frame_key(f) not in self.seen_keys]
        if not unconfirmed:
            return
        frame = data.draw(st.sampled_from(unconfirmed))
        key = frame_key(frame)
        self.seen_keys.add(key)
        seq = self.session.delivery.delivered(key)
        if seq is not None:
            self.confirmed_pending.append((seq, key))

    @rule()
    def delete_commits(self) -> None:
        for seq, _ in self.confirmed_pending:
            self.store.pop(seq, None)
        self.session.delivery.deleted(seq for seq, _ in self.confirmed_pending)
        self.confirmed_pending = []

    # -- checks
    @invariant()
    def nothing_twice(self) -> None:
        keys = [frame_key(f) for f in self.received + self.session.outbox.frames]
        assert len(keys) == len(set(keys))

    @invariant()
    def order_per_sender(self) -> None:
        for sender in SENDERS:
            ids = [frame_key(f)[1] for f in self.received + self.session.outbox.frames if f[12:28] == sender]
            assert ids == sorted(ids)

    def teardown(self) -> None:
        """Settle: every sender pushes, then send / confirm / delete / drain until quiet."""
        for sender in SENDERS:
            self.live_push(sender)
        for _ in range(200):
            self.drain()
            self.writer_sends()
            for frame in self.received:
                key = frame_key(frame)
                if key not in self.seen_keys:
                    self.seen_keys.add(key)
                    seq = self.session.delivery.delivered(key)
                    if seq is not None:
                        self.confirmed_pending.append((seq, key))
            self.delete_commits()
            if not self.store and not self.session.outbox.frames:
                break
        assert not self.store, f"rows never delivered: {sorted(self.store)}"
        self.nothing_twice()


TestDelivery = DeliveryMachine.TestCase
TestDelivery.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_live_push_rules() -> None:
    d = DeliveryState(2)
    assert not d.may_push_live(5)  # a new session is behind until its first drain
    d.drain_done(reached_end=True)
    assert d.may_push_live(5)
    d.pushed_live(5, (b"s", 1))
    assert not d.may_push_live(5)  # already pushed
    d.pushed_live(7, (b"s", 2))
    assert not d.may_push_live(9)  # two unconfirmed: no room
    assert d.behind
    assert d.delivered((b"s", 1)) == 5
    assert d.delivered((b"s", 1)) is None
    d.deleted([5])
    assert d.wants_drain()


def test_drain_skips_rows_pushed_live_and_advances_the_cursor() -> None:
    d = DeliveryState(10)
    d.drain_done(reached_end=True)
    d.pushed_live(8, (b"s", 1))
    d.fell_behind()
    assert d.skip_in_drain(8)
    assert d.cursor == 8
    assert not d.skip_in_drain(9)
    d.pushed_by_drain(9, (b"s", 2))
    assert d.cursor == 9
    assert not d.may_push_live(9)


def test_forget_frees_a_slot_of_a_row_that_left_the_queue() -> None:
    d = DeliveryState(1)
    d.drain_done(reached_end=True)
    d.pushed_live(3, (b"s", 1))
    assert d.room == 0
    d.forget(3, (b"s", 1))
    assert d.room == 1
    assert d.delivered((b"s", 1)) is None
