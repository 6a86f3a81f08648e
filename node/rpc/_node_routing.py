"""asgard.v1.Routing over the node's relay: unary Send and the Connect device session.

Send routes one data frame through the relay's Router exactly as a session's frame would be (same
reach rules, same DURABLE commit before the answer) and answers with the ACK's fields; a refusal is
raised as the NodeError matching the NACK reason. The frame's source must be a device the caller
may speak for: a device token's own device, or a device in a service or admin token's scope.

Connect runs a device session of the relay over the stream's frame channels (`DeviceLink` on a
`ChannelTransport`): WELCOME first, then everything as on the WebSocket relay. When the session
ends, its close code becomes the call's status (docs/protocol.md §1): 1000 → OK, and otherwise
the error below, carrying the close reason.
"""

from __future__ import annotations

from collections.abc import Awaitable

import trio

from node.auth import Action, Principal, Role
from node.errors import (
    Aborted,
    InvalidInput,
    NodeError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StoreError,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from node.registry import Registry
from node.relay.service import RelayService
from node.relay.state import id_bytes, reach_of
from node.router import DeliveryState, Outbox, Outcome, Session
from node.rpc import model
from store.queue import EnqueueItem
from wire import DecodeError
from wire.device import DATA_TYPES, AckStatus, Flags, FrameView, NackReason, decode_frame_untrusted

_STATUS: dict[int, model.DeliveryStatusName] = {
    AckStatus.DELIVERED: "delivered",
    AckStatus.QUEUED: "queued",
    AckStatus.FORWARDED: "forwarded",
}
_NACK_ERRORS: dict[int, type[NodeError]] = {
    NackReason.UNKNOWN_DEVICE: NotFound,
    NackReason.NO_RECIPIENT: NotFound,
    NackReason.NOT_PERMITTED: PermissionDenied,
    NackReason.QUEUE_FULL: ResourceExhausted,
    NackReason.RESOURCE_EXHAUSTED: ResourceExhausted,
    NackReason.UNAVAILABLE: Unavailable,
    NackReason.STORE_ERROR: StoreError,
}
_NACK_DETAILS: dict[int, str] = {
    NackReason.UNKNOWN_DEVICE: "no such device",
    NackReason.NO_RECIPIENT: "nobody online to receive it (send it DURABLE to queue it)",
    NackReason.NOT_PERMITTED: "this token may not reach that destination",
    NackReason.QUEUE_FULL: "the destination's offline queue is full",
    NackReason.RESOURCE_EXHAUSTED: "the destination is not reading fast enough",
    NackReason.UNAVAILABLE: "the route is unavailable now; retry later",
    NackReason.STORE_ERROR: "the store failed; the message was not stored",
}
CLOSE_ERRORS: dict[int, type[NodeError]] = {
    1001: Unavailable,  # the node is shutting down
    1008: ResourceExhausted,  # rate exceeded, not reading (write deadline), frame too short
    1009: TooLarge,
    1011: NodeError,
    1013: Unavailable,
    4000: Aborted,  # replaced by a newer session of the same device
    4001: Unauthenticated,
    4002: InvalidInput,
    4003: Unauthenticated,  # token revoked or device removed
}
_DURABLE = int(Flags.DURABLE)


def close_error(code: int, reason: str) -> NodeError | None:
    """The error a Connect call ends with for a session close `code` (None: a normal end)."""
    if code == 1000:
        return None
    error = CLOSE_ERRORS.get(code, Unavailable)
    return error(f"session closed ({code}){': ' + reason if reason else ''}", close_code=code)


class NodeRouting:
    """The routing half of the node's RpcBackend."""

    def __init__(self, relay: RelayService | None, registry: Registry) -> None:
        self.relay = relay
        self.registry = registry

    def _relay(self) -> RelayService:
        if self.relay is None:
            raise Unavailable("the relay is disabled on this node (relay.enabled = false)")
        return self.relay

    async def connect(
        self,
        who: Principal,
        frames_in: trio.abc.ReceiveChannel[bytes],
        frames_out: trio.abc.SendChannel[bytes],
    ) -> None:
        """Run a device session on the stream; its close decides the call's status."""
        relay = self._relay()
        code, reason = await relay.run_channel_session(who, frames_in, frames_out)
        error = close_error(code, reason)
        if error is not None:
            raise error

    def send(self, who: Principal, raw: bytes) -> model.SendResult | Awaitable[model.SendResult]:
        """Route one data frame and report what happened to it.

        A plain function so the bridge runs it inside the hand-over, with no task: it answers at
        once, except for a DURABLE frame, whose queue commit it returns as an awaitable.
        """
        relay = self._relay()
        frame = self._decode(raw, relay.max_payload)
        who.require(Action.ROUTE)
        source = str(frame.source_uuid)
        if who.role is Role.DEVICE and who.device_id != source:
            raise PermissionDenied("a device token may only send as its own device")
        networks = self.registry.device_networks(who, source)  # NotFound outside the caller's scope
        relay.stats.messages_in += 1
        sender, restore = self._sender(relay, frame, networks, who)
        hub = relay.hub
        hub.active = True  # the router's inline flush (FlushHub): no writer task wakes for this
        try:
            if frame.flags & _DURABLE:
                planned = relay.router.plan_durable(sender, frame)
            else:
                planned = relay.router.route(sender, frame)
        finally:
            restore()
            hub.flush()  # ends the step: writes what it queued
        if isinstance(planned, EnqueueItem):
            return self._send_durable(relay, frame, planned)
        return _send_result(frame, planned)

    async def _send_durable(
        self, relay: RelayService, frame: FrameView, item: EnqueueItem
    ) -> model.SendResult:
        return _send_result(frame, await self._commit(relay, frame, item))

    @staticmethod
    def _decode(raw: bytes, max_payload: int) -> FrameView:
        try:
            frame = decode_frame_untrusted(raw, max_payload=max_payload)
        except DecodeError as exc:
            if exc.hint == NackReason.TOO_LARGE:
                raise TooLarge(f"frame: {exc}") from None
            raise InvalidInput(f"frame: {exc}", field="frame") from None
        if frame.type not in DATA_TYPES:
            raise InvalidInput(
                "frame: Send routes data frames (DIRECT, BROADCAST, MULTICAST, ANYCAST); "
                "control frames belong to a Connect session",
                field="frame",
            )
        return frame

    @staticmethod
    def _sender(
        relay: RelayService, frame: FrameView, networks: tuple[str, ...], who: Principal
    ) -> tuple[Session, _Restore]:
        """The routing entry to send as, with the caller's reach (not the live session's)."""
        reach = reach_of(who)
        live = relay.table.sessions.get(frame.source)
        if live is not None:  # the device is connected: exclude it from its own fan-out
            saved = live.reach
            live.reach = reach
            return live, _Restore(live, saved)
        transient = Session(
            device_id=frame.source,
            device_text=str(frame.source_uuid),
            session_id="send",
            networks=frozenset(id_bytes(n) for n in networks if n),
            reach=reach,
            capabilities=(),
            outbox=Outbox(0, 0),
            delivery=DeliveryState(1),
            close=_ignore_close,
        )
        return transient, _Restore(None, None)

    @staticmethod
    async def _commit(relay: RelayService, frame: FrameView, item: EnqueueItem) -> Outcome:
        (result,) = await relay.queue.enqueue([item])
        if result.dropped:
            relay.removed_from_queue(result.dropped, NackReason.DROPPED)
        hub = relay.hub
        hub.active = True
        try:
            return relay.router.deliver_committed(frame, result)
        finally:
            hub.flush()  # ends the step: writes what it queued


def _send_result(frame: FrameView, outcome: Outcome) -> model.SendResult:
    """The answer to Send, or the NodeError matching the NACK."""
    code, recipients = outcome
    if code < 0:
        reason = -code
        error = _NACK_ERRORS.get(reason, InvalidInput)
        raise error(_NACK_DETAILS.get(reason, "refused"), nack_reason=reason)
    return model.SendResult(frame.message_id, _STATUS[code], recipients)


class _Restore:
    """Puts a live session's own reach back after routing as another caller."""

    __slots__ = ("reach", "session")

    def __init__(self, session: Session | None, reach: frozenset[bytes] | None) -> None:
        self.session = session
        self.reach = reach

    def __call__(self) -> None:
        if self.session is not None:
            self.session.reach = self.reach


def _ignore_close(code: int, reason: str) -> None:
    return None
