"""Handlers of the control frames a device sends (docs/protocol.md §3): one function per type.

Each takes (link, frame, replies), may append reply frames to `replies`, and raises a NodeError
or DecodeError to be answered with the matching NACK. `BUILTIN_HANDLERS` maps frame types to them;
the relay's dispatch dict starts as a copy, and the lock service adds its 0x20-0x2F handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from node.auth import Action
from node.errors import InvalidInput, NotFound, PermissionDenied
from node.relay._link import CLOSE_AUTH_FAILED, DeviceLink, FrameHandler
from node.relay.state import Phase, id_bytes
from node.router import ack_frame
from store import queue as q
from wire.device import (
    ZERO_ID,
    AckStatus,
    ControlMessage,
    Flags,
    FrameType,
    FrameView,
    Heartbeat,
    Hello,
    Join,
    Leave,
    Register,
    Subscribe,
    Unsubscribe,
    decode_control_untrusted,
    group_id,
)

if TYPE_CHECKING:
    from node.relay.service import RelayService

M = TypeVar("M", bound=ControlMessage)


def _decode(frame: FrameView, cls: type[M]) -> M:
    message = decode_control_untrusted(frame)
    assert isinstance(message, cls)
    return message


def _ack(link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
    if frame.flags & Flags.ACK_REQUESTED:
        replies.append(ack_frame(frame.message_id, link.device_bytes, AckStatus.DELIVERED))


def _relay(link: DeviceLink) -> RelayService:
    return link.relay


async def on_hello(link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
    """HELLO: authenticate with the token, answer WELCOME (same message id) or close with 4001."""
    hello = _decode(frame, Hello)
    principal = _relay(link).authenticate(hello.token)
    if link.hello_optional and link.principal is not None:  # a gRPC call, authenticated already
        if principal is None or principal.token_id != link.principal.token_id:
            raise InvalidInput("token: HELLO must name the token the call was made with")
        replies.append(_relay(link).welcome(link, frame.message_id))
        return
    if principal is None:
        link.close(CLOSE_AUTH_FAILED, "authentication failed")
        return
    link.principal, link.token, link.phase = principal, hello.token, Phase.AUTHENTICATED
    replies.append(_relay(link).welcome(link, frame.message_id))


async def on_register(link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
    """REGISTER: register the device in the registry and open (or update) its routing entry."""
    register = _decode(frame, Register)
    device = register.device_id.bytes
    if frame.source not in (ZERO_ID, device):
        raise InvalidInput("source: must be the device being registered")
    if link.session is not None and link.session.device_id != device:
        raise InvalidInput("device_id: this session is registered as another device")
    assert link.principal is not None
    link.principal.require(Action.ROUTE)
    await _relay(link).register(link, register, frame.message_id, replies)


async def on_heartbeat(link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
    """HEARTBEAT: the registry sees the device; the token is checked again (revocation: 4003)."""
    _decode(frame, Heartbeat)
    if await _relay(link).heartbeat(link):
        _ack(link, frame, replies)


async def on_join(link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
    """JOIN: become a (persisted) member of a multicast group of one of the device's networks."""
    join = _decode(frame, Join)
    membership = _membership(link, join)
    relay = _relay(link)
    await relay.storage.write(q.join_group, membership, relay.clock.now())
    relay.table.join(
        membership.group_id,
        id_bytes(membership.network_id),
        join.group,
        link.device_bytes,
        membership.device_id,
    )
    _ack(link, frame, replies)


def _membership(link: DeviceLink, message: Join | Leave) -> q.GroupMembership:
    session = link.session
    assert session is not None
    network = message.network_id.bytes
    if network not in session.networks:
        raise NotFound(f"network {message.network_id} is not one of this device's networks")
    if not session.may_reach(frozenset((network,))):
        raise PermissionDenied(f"this token may not use network {message.network_id}")
    gid = group_id(message.network_id, message.group)
    return q.GroupMembership(gid, session.device_text, str(message.network_id), message.group)


async def on_leave(link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
    """LEAVE: end a group membership (NACK not-found when there was none)."""
    leave = _decode(frame, Leave)
    membership = _membership(link, leave)
    relay = _relay(link)
    if not await relay.storage.write(q.leave_group, membership.group_id, membership.device_id):
        raise NotFound(f"not a member of group {leave.group!r}")
    relay.table.leave(membership.group_id, link.device_bytes)
    _ack(link, frame, replies)


async def on_subscribe(link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
    """SUBSCRIBE: EVENT frames for these devices and/or every device of a network (scoped)."""
    sub = _decode(frame, Subscribe)
    devices, networks = _watch_targets(link, sub)
    if not devices and not networks:
        raise InvalidInput("network_id or devices: name what to watch")
    _relay(link).events.watch(link, devices, networks, limit=_relay(link).settings.max_subscriptions)
    _ack(link, frame, replies)


async def on_unsubscribe(link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
    """UNSUBSCRIBE: stop those EVENTs (no field: all of them)."""
    sub = _decode(frame, Unsubscribe)
    if sub.network_id is None and sub.devices is None:
        _relay(link).events.forget(link)
    else:
        _relay(link).events.unwatch(
            link, [str(d) for d in sub.devices or ()], [str(sub.network_id)] if sub.network_id else []
        )
    _ack(link, frame, replies)


def _watch_targets(link: DeviceLink, sub: Subscribe) -> tuple[list[str], list[str]]:
    principal = link.principal
    assert principal is not None
    registry = _relay(link).registry
    devices = [registry.get_device(principal, str(d)).device_id for d in sub.devices or ()]
    networks = []
    if sub.network_id is not None:
        networks.append(registry.get_network(principal, str(sub.network_id)).network_id)
    return devices, networks


async def on_delivered(link: DeviceLink, frame: FrameView, replies: list[bytes]) -> None:
    """DELIVERED: the receiver processed a DURABLE frame; its queue row can go."""
    decode_control_untrusted(frame)  # checks the empty payload
    assert link.session is not None
    _relay(link).queue.confirm(link.session, (frame.destination, frame.message_id))
    _ack(link, frame, replies)


BUILTIN_HANDLERS: dict[int, FrameHandler] = {
    FrameType.HELLO: on_hello,
    FrameType.REGISTER: on_register,
    FrameType.HEARTBEAT: on_heartbeat,
    FrameType.JOIN: on_join,
    FrameType.LEAVE: on_leave,
    FrameType.SUBSCRIBE: on_subscribe,
    FrameType.UNSUBSCRIBE: on_unsubscribe,
    FrameType.DELIVERED: on_delivered,
}
