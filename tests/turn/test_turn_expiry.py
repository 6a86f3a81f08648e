"""Timers under `autojump_clock`: permissions (300 s), channels (600 s, then a 300 s quarantine),
allocations (lifetime), reservations and TCP idle connections. The service runs Trio-only here
(relay_thread=False) so the mock clock sees every socket."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from wire.stun import Attr, Attribute, Method, encode_even_port, encode_requested_transport

from .conftest import TIMEOUT_S, EchoPeer, TurnError, base_settings, start_turn


@pytest.fixture
async def trio_turn(nursery: trio.Nursery) -> Any:
    return await start_turn(nursery, base_settings(relay_thread=False))


async def relayed(client: Any, channel: int, payload: bytes) -> bool:
    """Whether a ChannelData round trip through the echo peer comes back within 1 s."""
    await client.send_channel(channel, payload)
    with trio.move_on_after(1):
        return await client.receive_data() == ("channel", channel, payload)
    return False


async def test_permission_expires_after_300_s_and_channels_pause(
    autojump_clock: Any, trio_turn: Any, client_factory: Any, echo_peer: EchoPeer
) -> None:
    client = await client_factory(trio_turn.udp)
    await client.allocate(lifetime=3600)
    await client.channel_bind(0x4001, echo_peer.address)
    assert await relayed(client, 0x4001, b"one")
    await trio.sleep(299)
    assert await relayed(client, 0x4001, b"two")
    await trio.sleep(2)  # 302 s after the ChannelBind: the permission is gone, the channel is not
    stats = trio_turn.service.statistics()
    assert (stats.permissions, stats.channels) == (0, 1)
    assert not await relayed(client, 0x4001, b"three")
    await client.create_permission(echo_peer.address)
    assert await relayed(client, 0x4001, b"four")
    assert [d for d, _ in echo_peer.received] == [b"one", b"two", b"four"]


async def test_channel_expires_after_600_s_and_is_quarantined(
    autojump_clock: Any, trio_turn: Any, client_factory: Any, echo_peer: EchoPeer
) -> None:
    client = await client_factory(trio_turn.udp)
    await client.allocate(lifetime=3600)
    await client.channel_bind(0x4002, echo_peer.address)
    for _ in range(3):  # keep the permission, not the channel
        await trio.sleep(200)
        await client.create_permission(echo_peer.address)
    await trio.sleep(1)  # 601 s
    assert trio_turn.service.statistics().channels == 0
    assert not await relayed(client, 0x4002, b"late")
    with pytest.raises(TurnError) as info:
        await client.channel_bind(0x4002, ("127.0.0.1", echo_peer.address[1] + 1))
    assert info.value.code == 400  # RFC 8656 §12: not to another peer for 5 minutes
    with pytest.raises(TurnError) as info:
        await client.channel_bind(0x4003, echo_peer.address)
    assert info.value.code == 400  # nor this peer to another number
    await client.channel_bind(0x4002, echo_peer.address)
    assert await relayed(client, 0x4002, b"rebound")


async def test_channel_rules(
    autojump_clock: Any, trio_turn: Any, client_factory: Any, echo_peer: EchoPeer
) -> None:
    client = await client_factory(trio_turn.udp)
    await client.allocate()
    await client.channel_bind(0x4010, echo_peer.address)
    await client.channel_bind(0x4010, echo_peer.address)  # refresh
    for channel, peer in (
        (0x4011, echo_peer.address),
        (0x4010, ("127.0.0.1", 9)),
        (0x3FFF, ("127.0.0.1", 9)),
    ):
        with pytest.raises(TurnError) as info:
            await client.channel_bind(channel, peer)
        assert info.value.code == 400


async def test_allocation_expires_and_its_relay_port_is_freed(
    autojump_clock: Any, trio_turn: Any, client_factory: Any
) -> None:
    client = await client_factory(trio_turn.udp)
    address = await client.allocate(lifetime=600)
    await trio.sleep(599)
    assert trio_turn.service.statistics().allocations == 1
    await trio.sleep(2)
    assert trio_turn.service.statistics().allocations == 0
    with pytest.raises(TurnError) as info:
        await client.refresh()
    assert info.value.code == 437
    await trio.sleep(0)  # let the relay task close its socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(address)


async def test_refresh_extends_the_lifetime(autojump_clock: Any, trio_turn: Any, client_factory: Any) -> None:
    client = await client_factory(trio_turn.udp)
    await client.allocate(lifetime=600)
    for _ in range(3):
        await trio.sleep(500)
        await client.refresh(600)
    assert trio_turn.service.statistics().allocations == 1
    await client.refresh(3600)
    await client.refresh(600)  # a shorter lifetime takes effect too
    await trio.sleep(601)
    assert trio_turn.service.statistics().allocations == 0


async def test_unused_reservation_expires(autojump_clock: Any, trio_turn: Any, client_factory: Any) -> None:
    client = await client_factory(trio_turn.udp)
    response = await client.request(
        Method.ALLOCATE,
        [
            Attribute(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)),
            Attribute(Attr.EVEN_PORT, encode_even_port(True)),
        ],
    )
    token = response.get(Attr.RESERVATION_TOKEN)
    assert trio_turn.service.statistics().reservations == 1
    await trio.sleep(31)
    assert trio_turn.service.statistics().reservations == 0
    other = await client_factory(trio_turn.udp)
    with pytest.raises(TurnError) as info:
        await other.allocate([Attribute(Attr.RESERVATION_TOKEN, token or b"")])
    assert info.value.code == 508


async def test_tcp_idle_connection_is_closed(
    nursery: trio.Nursery, autojump_clock: Any, client_factory: Any
) -> None:
    turn = await start_turn(nursery, base_settings(relay_thread=False, tcp_idle_timeout_s=30))
    idle = await client_factory(turn.tcp, transport="tcp")
    busy = await client_factory(turn.tcp, transport="tcp")
    await busy.allocate(lifetime=600)
    with trio.fail_after(TIMEOUT_S + 30), pytest.raises(EOFError):
        await idle.next_matching(lambda r: True)
    await trio.sleep(100)
    assert await busy.refresh()  # an allocation keeps its connection open
    assert turn.service.statistics().tcp_connections == 1
