"""One device connection: its reader loop (batches in, routing, replies) and its writer loop.

The connection is a `FrameTransport`: a WebSocket connection, or the frame channels of a gRPC
`Routing.Connect` stream (`_transport.ChannelTransport`); the session logic is the same for both.

Reader: `receive_batch()` returns every message of one socket read; each is decoded (header only),
data frames are routed at once (the received `bytes` object goes to the destinations' outboxes)
and the replies for the whole batch (ACK/NACK) go into this connection's outbox in one step.
A batch that carries DURABLE frames is split at the first one: what precedes it is routed at
once, the rest waits for one store commit of all its DURABLE frames and is then handled in order,
so a sender's frames reach a receiver in the order they were sent.

The hot path is `_route_batch`, a plain function: the best-effort data frames at the head of a
batch of a registered session are decoded and routed without creating a coroutine, and only a
frame that needs more (a control frame, a DURABLE one, a malformed one) goes on to the async
`_handle_batch`. The reader runs as its own task, so each wake-up resumes only its few frames
rather than the whole handler stack above it.

Writer: the only task that writes to the socket; it takes everything queued in the outbox and
sends it with one `send_batch` (one `sendmsg`), and it drains the offline queue when the session
is behind. The reader never waits for a receiver: a full outbox refuses, it never blocks.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from node.auth import Principal
from node.errors import NodeError, StoreError
from node.relay._transport import FrameTransport
from node.relay._wsconn import ConnectionClosed
from node.relay.state import HeartbeatThrottle, MessageRate, Phase, admit
from node.router import Outbox, Outcome, Session, ack_frame, nack_frame
from store.queue import EnqueueItem, EnqueueResult
from wire import DecodeError
from wire.device import (
    DATA_TYPES,
    ZERO_ID,
    Flags,
    FrameView,
    NackReason,
    decode_frame_untrusted,
    nack_reason_for_code,
)
from wire.ws import CLOSE_POLICY_VIOLATION

if TYPE_CHECKING:
    from node.relay.service import RelayService
    from store.records import Device

CLOSE_REPLACED = 4000
CLOSE_AUTH_FAILED = 4001
CLOSE_BAD_VERSION = 4002
CLOSE_REVOKED = 4003
_MESSAGE_ID = struct.Struct("!Q")
_ACK_REQUESTED = int(Flags.ACK_REQUESTED)
_DURABLE = int(Flags.DURABLE)
_NOT_THIS_DEVICE = "source is not this session's device"
_HELLO = 0x01

FrameHandler = Callable[["DeviceLink", FrameView, list[bytes]], Awaitable[None]]
"""Handles one control frame; appends its replies (ACK, NACK, answers) to the list."""


class DeviceLink:
    """A device's connection (WebSocket, or a gRPC Connect stream), from its start to its close."""

    def __init__(
        self, relay: RelayService, transport: FrameTransport, principal: Principal | None, token: str | None
    ):
        settings = relay.settings
        now = trio.current_time()
        self.relay = relay
        self.transport = transport
        self.principal = principal
        self.token = token
        self.phase = Phase.AUTHENTICATED if principal is not None else Phase.AWAITING_HELLO
        self.session_id = "s-" + uuid.uuid4().hex[:16]
        self.outbox = Outbox(settings.outbox_max_messages, settings.outbox_max_bytes)
        self.outbox.hub = relay.hub
        self.outbox.sink = self._write_now
        self.rate = MessageRate(settings.rate_per_s, settings.burst, now)
        self.throttle = HeartbeatThrottle()
        self.session: Session | None = None
        self.device: Device | None = None
        self.connection_id: str | None = None
        self.watching_devices: set[str] = set()
        self.watching_networks: set[str] = set()
        self.close_code: int | None = None
        self.close_reason = ""
        self.nursery: trio.Nursery | None = None  # for handlers that must wait (lock operations)
        self.hello_optional = False  # pre-authenticated (gRPC call): a HELLO before REGISTER is answered
        self._reader_scope = trio.CancelScope()
        self._clock = trio.lowlevel.current_clock()  # the run's clock (the test's MockClock too)

    # ------------------------------------------------------------------ identity
    @property
    def device_bytes(self) -> bytes:
        """The registered device's id (zero before REGISTER): the destination of replies."""
        return self.session.device_id if self.session is not None else ZERO_ID

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def close(self, code: int, reason: str) -> None:
        """End this connection with `code` (the first request wins).

        The reader stops at once; the writer sends what is already queued (e.g. the NACK that
        explains the close) and ends; then the close handshake runs with `code`.
        """
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.outbox.close()
            self._reader_scope.cancel()

    def send(self, frame: bytes) -> bool:
        """Queue a frame the node produced for this device; a stuck reader is closed with 1008."""
        if self.outbox.put_control(frame):
            return True
        self.close(CLOSE_POLICY_VIOLATION, "not reading: outbox full")
        return False

    # ------------------------------------------------------------------ lifetime
    async def run(self, first_frames: list[bytes]) -> None:
        """Run reader and writer until the peer closes or `close` is called."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop, name="relay-writer")
            for frame in first_frames:
                self.send(frame)
            async with trio.open_nursery() as tasks:  # the reader, and handlers' own waits (locks)
                self.nursery = tasks
                tasks.start_soon(self._read_loop, tasks.cancel_scope, name="relay-reader")
            self.outbox.close()  # the writer sends what is queued, then returns

    async def _read_loop(self, tasks: trio.CancelScope) -> None:
        """The reader task. The loop is the task's own coroutine, so a wake-up resumes no frames
        above it; best-effort data goes through `_route_batch` without an await."""
        ws, relay, clock = self.transport, self.relay, self._clock
        stats, hub, throttle = relay.stats, relay.hub, self.throttle
        awaiting_hello = Phase.AWAITING_HELLO  # reading an enum member costs ~0.2 µs each time
        replies: list[bytes] = []
        try:
            with self._reader_scope:
                while self.close_code is None:
                    if self.phase is awaiting_hello:
                        batch: list[bytes] = []
                        with trio.move_on_after(relay.settings.hello_timeout_s):
                            batch = await ws.receive_batch()
                        if not batch:
                            self.close(CLOSE_AUTH_FAILED, "no HELLO within the handshake timeout")
                            return
                    else:
                        batch = await ws.receive_batch()
                    now = clock.current_time()
                    count = len(batch)
                    stats.messages_in += count
                    if not self.rate.take(count, now):
                        stats.rate_limited += 1
                        self.close(CLOSE_POLICY_VIOLATION, "message rate exceeded")
                        return
                    hub.active = True
                    try:
                        done = self._route_batch(batch, replies)
                        if done < count:
                            await self._handle_batch(batch, done, replies)
                        if replies:
                            self._reply(replies)
                            replies = []
                    finally:
                        if hub.touched:
                            hub.flush()
                        else:
                            hub.active = False
                    if (
                        self.session is not None
                        and now >= throttle.next_at
                        and throttle.due(now, relay.settings.heartbeat_write_interval_s)
                    ):
                        await relay.refresh(self)
        except ConnectionClosed:
            pass
        finally:
            tasks.cancel()  # the reader ended: so do the handlers' waits

    async def _write_loop(self) -> None:
        outbox, ws, relay = self.outbox, self.transport, self.relay
        try:
            while True:
                session = self.session
                if session is not None and not outbox.closed and session.delivery.wants_drain():
                    relay.drain(session)
                frames = await outbox.take()
                if frames or ws.write_pending:
                    await ws.send_batch(frames)
                    relay.stats.frames_out += len(frames)
                elif outbox.closed:
                    return
        except ConnectionClosed as exc:
            self.close(exc.code, exc.reason)

    def _write_now(self, frames: list[bytes]) -> bool:
        """The outbox's sink: write from the current task without waiting (see FlushHub)."""
        ws = self.transport
        try:
            if not ws.send_batch_nowait(frames):
                return False
        except ConnectionClosed:
            return False  # the writer finds the connection closed and ends the link
        self.relay.stats.frames_out += len(frames)
        if ws.write_pending:  # the kernel took part: the writer finishes it, waiting if it must
            self.outbox.wake()
        return True

    # ------------------------------------------------------------------ batches
    def _route_batch(self, batch: list[bytes], replies: list[bytes]) -> int:
        """Route the best-effort data frames at the head of `batch` (the hot path: no await).

        Returns the index of the first frame it left alone (one that is not a well-formed
        best-effort data frame from this session's device): `_handle_batch` takes it from there.
        """
        session = self.session
        if session is None:
            return 0
        relay = self.relay
        route, max_payload, device = relay.router.route, relay.max_payload, session.device_id
        i = 0
        for raw in batch:
            try:
                frame = decode_frame_untrusted(raw, max_payload=max_payload)
            except DecodeError:
                return i
            if frame.type not in DATA_TYPES or frame.flags & _DURABLE or frame.source != device:
                return i
            code, recipients = route(session, frame)
            if code <= 0:
                self._nack(frame.message_id, -code, "", replies)
            elif frame.flags & _ACK_REQUESTED:
                replies.append(ack_frame(frame.message_id, frame.source, code, recipients))
            i += 1
        return i

    async def _handle_batch(self, batch: list[bytes], start: int, replies: list[bytes]) -> None:
        """Handle `batch` from `start` on: any frame (control, DURABLE, malformed, refused).

        Frames for idle receivers are written inline at the end of each synchronous step
        (`FlushHub`), never across an await.
        """
        hub = self.relay.hub
        for i in range(start, len(batch)):
            frame = self._decode(batch[i], replies)
            if frame is None:
                if self.closing:
                    break
                continue
            if frame.type in DATA_TYPES:
                if not self._may_send(frame, replies):
                    continue
                if frame.flags & _DURABLE:
                    await self._handle_durable(batch, i, replies)
                    break
                self._answer(frame, self.relay.router.route(self.session, frame), replies)  # type: ignore[arg-type]
            else:
                hub.flush()
                await self._control(frame, replies)
                hub.active = True
                if self.closing:
                    break

    async def _handle_durable(self, batch: list[bytes], start: int, replies: list[bytes]) -> None:
        """Frames from the first DURABLE one on: one commit for all DURABLE ones, then in order."""
        router = self.relay.router
        session = self.session
        assert session is not None
        steps: list[tuple[FrameView, EnqueueItem | Outcome | None]] = []
        items: list[EnqueueItem] = []
        for raw in batch[start:]:
            frame = self._decode(raw, replies)
            if frame is None:
                if self.closing:
                    break
                continue
            if frame.type in DATA_TYPES and frame.flags & _DURABLE:
                if self._may_send(frame, replies):
                    planned = router.plan_durable(session, frame)
                    if isinstance(planned, EnqueueItem):
                        items.append(planned)
                    steps.append((frame, planned))
            else:
                steps.append((frame, None))
        hub = self.relay.hub
        hub.flush()
        results = await self._commit(items)
        hub.active = True
        committed = dict(zip(map(id, items), results, strict=True)) if results is not None else {}
        for frame, step in steps:
            if isinstance(step, EnqueueItem):
                self._answer(frame, self._delivered(frame, committed.get(id(step))), replies)
            elif step is not None:
                self._answer(frame, step, replies)
            elif frame.type not in DATA_TYPES:
                hub.flush()
                await self._control(frame, replies)
                hub.active = True
                if self.closing:
                    return
            elif self._may_send(frame, replies):
                self._answer(frame, router.route(session, frame), replies)

    def _delivered(self, frame: FrameView, result: EnqueueResult | None) -> Outcome:
        if result is None:
            return (-NackReason.STORE_ERROR, 0)
        if result.dropped:
            self.relay.removed_from_queue(result.dropped, NackReason.DROPPED)
        return self.relay.router.deliver_committed(frame, result)

    async def _commit(self, items: list[EnqueueItem]) -> list[EnqueueResult] | None:
        if not items:
            return []
        try:
            return await self.relay.queue.enqueue(items)
        except StoreError:
            self.relay.stats.store_errors += 1
            return None

    def _decode(self, raw: bytes, replies: list[bytes]) -> FrameView | None:
        try:
            return decode_frame_untrusted(raw, max_payload=self.relay.max_payload)
        except DecodeError as exc:
            if len(raw) < 12:  # no message id to answer with
                self.close(CLOSE_POLICY_VIOLATION, "device frame shorter than 12 bytes")
                return None
            reason = exc.hint or NackReason.BAD_FRAME
            self._nack(_MESSAGE_ID.unpack_from(raw, 4)[0], reason, str(exc), replies)
            if reason == NackReason.UNSUPPORTED_VERSION:
                self.close(CLOSE_BAD_VERSION, "protocol version not supported")
            return None

    def _may_send(self, frame: FrameView, replies: list[bytes]) -> bool:
        session = self.session
        if session is None:
            reason = admit(self.phase, frame.type) or NackReason.NOT_REGISTERED
            self._nack(frame.message_id, reason, "", replies)
            return False
        if frame.source != session.device_id:
            self._nack(
                frame.message_id, NackReason.INVALID_INPUT, "source is not this session's device", replies
            )
            return False
        return True

    def _answer(self, frame: FrameView, outcome: tuple[int, int], replies: list[bytes]) -> None:
        code, recipients = outcome
        if code > 0:
            if frame.flags & _ACK_REQUESTED:
                replies.append(ack_frame(frame.message_id, frame.source, code, recipients))
        else:
            self._nack(frame.message_id, -code, "", replies)

    def _nack(self, message_id: int, reason: int, detail: str, replies: list[bytes]) -> None:
        stats = self.relay.stats.nacks
        stats[reason] = stats.get(reason, 0) + 1
        replies.append(nack_frame(message_id, self.device_bytes, reason, detail))

    async def _control(self, frame: FrameView, replies: list[bytes]) -> None:
        reason = admit(self.phase, frame.type)
        if reason is not None and frame.type == _HELLO and self.hello_optional and self.session is None:
            reason = None  # the handler checks that it names the call's own token
        if reason is None and self.session is not None and frame.source != self.session.device_id:
            self._nack(
                frame.message_id, NackReason.INVALID_INPUT, "source is not this session's device", replies
            )
            return
        if reason is not None:
            self._nack(frame.message_id, reason, "", replies)
            return
        handler = self.relay.handlers.get(frame.type)
        if handler is None:
            self._nack(
                frame.message_id,
                NackReason.BAD_FRAME,
                f"frame type {frame.type:#04x} is not supported",
                replies,
            )
            return
        try:
            await handler(self, frame, replies)
        except DecodeError as exc:
            self._nack(frame.message_id, exc.hint or NackReason.BAD_FRAME, str(exc), replies)
        except NodeError as exc:
            self._nack(frame.message_id, nack_reason_for_code(exc.code), exc.detail, replies)

    def _reply(self, replies: list[bytes]) -> None:
        for frame in replies:
            if not self.send(frame):
                return
