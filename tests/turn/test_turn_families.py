"""IPv6 relays, dual allocations (RFC 8656 §7.2 ADDITIONAL-ADDRESS-FAMILY), IPv6 listeners and the
per-allocation bandwidth cap."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import trio

from wire.stun import (
    Attr,
    Attribute,
    Message,
    MessageClass,
    Method,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_address_family,
    encode_message,
    encode_requested_transport,
    encode_u32,
)

from .conftest import TIMEOUT_S, TurnError, base_settings, start_turn


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")


async def ipv6_echo(nursery: trio.Nursery) -> tuple[str, int]:
    sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    await sock.bind(("::1", 0))

    async def echo(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with sock:
            task_status.started()
            while True:
                data, source = await sock.recvfrom(70000)
                await sock.sendto(data, source)

    await nursery.start(echo)
    host, port = sock.getsockname()[:2]
    return host, port


@needs_ipv6
async def test_dual_allocation_and_dropping_one_family(nursery: trio.Nursery, client_factory: Any) -> None:
    turn = await start_turn(nursery, base_settings(relay_ipv6="::1"))
    assert turn.addresses.relay == {"ipv4": "127.0.0.1", "ipv6": "::1"}
    client = await client_factory(turn.udp)
    response = await client.request(
        Method.ALLOCATE,
        [
            Attribute(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)),
            Attribute(Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(2)),
        ],
    )
    relayed = [
        decode_xor_address_untrusted(v, response.transaction_id)
        for v in response.get_all(Attr.XOR_RELAYED_ADDRESS)
    ]
    assert [host for host, _ in relayed] == ["127.0.0.1", "::1"]
    peer = await ipv6_echo(nursery)
    await client.channel_bind(0x4001, peer)
    await client.send_channel(0x4001, b"over ipv6")
    with trio.fail_after(TIMEOUT_S):
        assert await client.receive_data() == ("channel", 0x4001, b"over ipv6")
    await client.send_indication(peer, b"indicated")
    with trio.fail_after(TIMEOUT_S):  # the answer comes on the channel bound to that peer
        assert await client.receive_data() == ("channel", 0x4001, b"indicated")
    drop_v6 = [
        Attribute(Attr.LIFETIME, encode_u32(0)),
        Attribute(Attr.REQUESTED_ADDRESS_FAMILY, encode_address_family(2)),
    ]
    await client.request(Method.REFRESH, drop_v6)
    assert turn.service.statistics().allocations == 1
    with pytest.raises(TurnError) as info:
        await client.create_permission(peer)
    assert info.value.code == 443
    with pytest.raises(TurnError) as info:
        await client.request(Method.REFRESH, drop_v6)
    assert info.value.code == 443


@needs_ipv6
async def test_ipv6_only_allocation_over_an_ipv6_listener(nursery: trio.Nursery, client_factory: Any) -> None:
    turn = await start_turn(nursery, base_settings(extra_hosts=["::1"], relay_ipv6="::1"))
    v6_listener = next(a for a in turn.addresses.udp if ":" in a[0])
    assert v6_listener[1] == turn.udp[1]  # the same port on both families
    client = await client_factory(turn.udp)
    relayed = await client.allocate([Attribute(Attr.REQUESTED_ADDRESS_FAMILY, encode_address_family(2))])
    assert relayed[0] == "::1"
    sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("::1", 0))
        tid = os.urandom(12)
        await sock.sendto(encode_message(Message(Method.BINDING, MessageClass.REQUEST, tid)), v6_listener)
        with trio.fail_after(TIMEOUT_S):
            data, _ = await sock.recvfrom(2048)
        local = sock.getsockname()[:2]
    response = decode_message_untrusted(data)
    value = response.get(Attr.XOR_MAPPED_ADDRESS)
    assert value is not None and decode_xor_address_untrusted(value, tid) == local


async def test_ipv6_listen_address_missing_is_skipped(nursery: trio.Nursery) -> None:
    turn = await start_turn(nursery, base_settings(extra_hosts=["2001:db8::1"]))
    assert [a for a in turn.addresses.udp if ":" in a[0]] == []


async def test_bandwidth_cap_drops_and_counts(
    nursery: trio.Nursery, client_factory: Any, echo_peer: Any
) -> None:
    turn = await start_turn(nursery, base_settings(bandwidth_limit_bytes_per_s=1024))
    client = await client_factory(turn.udp)
    await client.allocate()
    await client.channel_bind(0x4001, echo_peer.address)
    payload = bytes(1000)
    for _ in range(100):  # 100 kB at once against a 64 KiB burst
        await client.send_channel(0x4001, payload)
    tid = os.urandom(12)
    await client.transact(encode_message(Message(Method.BINDING, MessageClass.REQUEST, tid)))
    stats = turn.service.statistics()
    assert stats.drops.get("bandwidth", 0) > 0
    assert stats.relayed["to_peer_bytes"] <= 65_536 + 2048
