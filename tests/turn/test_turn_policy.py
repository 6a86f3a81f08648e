"""Peer address policy: every listed range's first and last address and the one just outside,
IPv4 cases also in IPv4-mapped / IPv4-compatible / NAT64 / 6to4 form; the service answers 403 on
CreatePermission and ChannelBind and no datagram leaves a relay socket towards a refused peer."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest
import trio

from node.turn import PeerPolicy
from wire.stun import Message, MessageClass, Method, encode_message

from .conftest import TIMEOUT_S, EchoPeer, TurnError, base_settings, start_turn

# The ranges the issue lists (and the other special-purpose ones), written out independently.
SPEC_V4 = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
]  # fmt: skip
SPEC_V6 = [
    "::/128", "::1/128", "::ffff:0:0/96", "::/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "2001::/23", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
]  # fmt: skip
SPEC = [ipaddress.ip_network(n) for n in SPEC_V4 + SPEC_V6]


def listed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address.version == net.version and address in net for net in SPEC)


def wrapped(v4: ipaddress.IPv4Address) -> dict[str, str]:
    """The IPv6 forms that embed an IPv4 address."""
    value = int(v4)
    return {
        "mapped": str(ipaddress.IPv6Address((0xFFFF << 32) | value)),
        "compatible": str(ipaddress.IPv6Address(value)),
        "nat64": str(ipaddress.IPv6Address((0x64FF9B << 96) | value)),
        "6to4": str(ipaddress.IPv6Address((0x2002 << 112) | (value << 80))),
    }


def edges() -> list[tuple[str, bool]]:
    """(address, refused?) for the first, last and just-outside address of every listed range."""
    cases: list[tuple[str, bool]] = []
    for net in SPEC:
        first, last = net.network_address, net.broadcast_address
        cases += [(str(first), True), (str(last), True)]
        for outside_value in (int(first) - 1, int(last) + 1):
            if 0 <= outside_value < 2**net.max_prefixlen:
                outside = (
                    ipaddress.ip_address(outside_value)
                    if net.version == 4
                    else ipaddress.IPv6Address(outside_value)
                )
                cases.append((str(outside), listed(outside)))
    return cases


def wrapped_denied() -> list[str]:
    hosts = []
    for text in SPEC_V4:
        net = ipaddress.IPv4Network(text)
        for v4 in (net.network_address, net.broadcast_address):
            hosts += wrapped(v4).values()
    return hosts


@pytest.mark.parametrize(("host", "refused"), edges())
def test_range_edges(host: str, refused: bool) -> None:
    assert PeerPolicy().allows(host) is not refused


@pytest.mark.parametrize("host", wrapped_denied())
def test_ipv4_in_ipv6_forms_are_refused(host: str) -> None:
    assert not PeerPolicy().allows(host)


@pytest.mark.parametrize(
    "host", ["::ffff:127.0.0.1", "::", "::1", "::ffff:7f00:1", "::127.0.0.1", "0::ffff:7f00:1"]
)
def test_loopback_spellings_are_refused(host: str) -> None:
    assert not PeerPolicy().allows(host)


@pytest.mark.parametrize(
    "host", ["::ffff:127.0.0.1", "::", "::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::"]
)
def test_loopback_in_other_forms_stays_refused_with_loopback_allowed(host: str) -> None:
    assert not PeerPolicy(allow_loopback=True).allows(host)


def test_allow_loopback_opens_only_loopback() -> None:
    policy = PeerPolicy(allow_loopback=True)
    assert policy.allows("127.0.0.1") and policy.allows("127.255.255.254") and policy.allows("::1")
    assert not policy.allows("10.0.0.1")
    assert not PeerPolicy().allows("127.0.0.1")


def test_allow_list_wins_but_the_embedded_address_is_still_checked() -> None:
    lan = PeerPolicy(allow=["192.168.1.0/24"])
    assert lan.allows("192.168.1.20") and not lan.allows("192.168.2.1")
    assert not lan.allows(wrapped(ipaddress.IPv4Address("192.168.1.20"))["nat64"])
    nat64 = PeerPolicy(allow=["64:ff9b::/96", "2002::/16", "::ffff:0:0/96"])
    public = ipaddress.IPv4Address("8.8.8.8")
    for form in ("nat64", "6to4", "mapped"):
        assert nat64.allows(wrapped(public)[form]), form
        for v4 in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.0.1"):
            assert not nat64.allows(wrapped(ipaddress.IPv4Address(v4))[form]), (form, v4)


def test_teredo_and_local_nat64_embeddings() -> None:
    teredo = PeerPolicy(allow=["2001::/32"])
    # Teredo: server IPv4 in bits 32-63, client IPv4 inverted in the low 32 bits (RFC 4380).
    server, client = int(ipaddress.IPv4Address("8.8.8.8")), int(ipaddress.IPv4Address("10.0.0.1"))
    bad = ipaddress.IPv6Address((0x20010000 << 96) | (server << 64) | (~client & 0xFFFFFFFF))
    good = ipaddress.IPv6Address(
        (0x20010000 << 96) | (server << 64) | (~int(ipaddress.IPv4Address("9.9.9.9")) & 0xFFFFFFFF)
    )
    assert not teredo.allows(str(bad)) and teredo.allows(str(good))
    local = PeerPolicy(allow=["64:ff9b:1::/48"])
    assert not local.allows("64:ff9b:1:7f00:0:100::")  # 127.0.0.1 around the u-octet (RFC 6052 §2.2)
    assert local.allows("64:ff9b:1:808:8:800::")  # 8.8.8.8


def test_extra_deny_and_unparsable() -> None:
    policy = PeerPolicy(deny=["8.8.8.0/24"])
    assert not policy.allows("8.8.8.8") and policy.allows("8.8.4.4")
    assert not PeerPolicy().allows("not-an-address")


def _service_hosts() -> list[str]:
    hosts = [host for host, refused in edges() if refused]
    return [*hosts, *wrapped_denied(), "::ffff:127.0.0.1", "::", "::1"]


async def test_service_refuses_denied_peers_and_sends_nothing(
    nursery: trio.Nursery, client_factory: Any, echo_peer: EchoPeer, recorded_relay_sends: list[Any]
) -> None:
    turn = await start_turn(nursery, base_settings(allow_loopback_peers=False))
    client = await client_factory(turn.udp)
    await client.allocate()
    hosts = _service_hosts()
    for host in hosts:
        with pytest.raises(TurnError) as info:
            await client.create_permission((host, 9))
        assert info.value.code == 403, host
        with pytest.raises(TurnError) as info:
            await client.channel_bind(0x4000, (host, 9))
        assert info.value.code == 403, host
    loopback_peer = echo_peer.address
    for code in (403, 403):
        with pytest.raises(TurnError) as info:
            await client.create_permission(loopback_peer)
        assert info.value.code == code
    for host in [*hosts, loopback_peer[0]]:
        port = loopback_peer[1] if host == loopback_peer[0] else 9
        await client.send_indication((host, port), b"must not leave")
        await client.send_channel(0x4000, b"must not leave either")
    # A Binding round trip after the indications: the server has processed them all.
    tid = os.urandom(12)
    await client.transact(encode_message(Message(Method.BINDING, MessageClass.REQUEST, tid)))
    assert recorded_relay_sends == []
    assert echo_peer.received == []
    stats = turn.service.statistics()
    assert stats.refusals["peer-denied"] == 2 * len(hosts) + 2
    assert stats.relayed["to_peer_datagrams"] == 0
    assert stats.permissions == stats.channels == 0


async def test_one_refused_peer_refuses_the_whole_request(
    turn: Any, client_factory: Any, echo_peer: EchoPeer, recorded_relay_sends: list[Any]
) -> None:
    client = await client_factory(turn.udp)
    await client.allocate()
    with pytest.raises(TurnError) as info:
        await client.create_permission(echo_peer.address, ("10.0.0.1", 9))
    assert info.value.code == 403
    assert turn.service.statistics().permissions == 0


async def test_live_reload_revokes_and_allows(
    nursery: trio.Nursery, client_factory: Any, echo_peer: EchoPeer, recorded_relay_sends: list[Any]
) -> None:
    settings = base_settings()
    turn = await start_turn(nursery, settings)
    client = await client_factory(turn.udp)
    relayed = await client.allocate()
    await client.channel_bind(0x4005, echo_peer.address)
    await client.send_channel(0x4005, b"before")
    with trio.fail_after(TIMEOUT_S):
        assert await client.receive_data() == ("channel", 0x4005, b"before")
    cold = turn.service.apply_settings(base_settings(allow_loopback_peers=False, port=1))
    assert cold == ["port"]
    sent_before = len(recorded_relay_sends)
    await client.send_channel(0x4005, b"after")
    await client.send_indication(echo_peer.address, b"after")
    with pytest.raises(TurnError) as info:
        await client.create_permission(echo_peer.address)
    assert info.value.code == 403
    assert len(recorded_relay_sends) == sent_before
    assert [data for data, _ in echo_peer.received] == [b"before"]
    turn.service.apply_settings(base_settings(allow_loopback_peers=False, peer_allow=["127.0.0.0/8"]))
    await client.channel_bind(0x4005, echo_peer.address)
    await client.send_channel(0x4005, b"allowed again")
    with trio.fail_after(TIMEOUT_S):
        assert await client.receive_data() == ("channel", 0x4005, b"allowed again")
    assert echo_peer.received[-1] == (b"allowed again", relayed)


async def test_dual_stack_peer_needs_matching_relay_family(turn: Any, client_factory: Any) -> None:
    client = await client_factory(turn.udp)
    await client.allocate()
    with pytest.raises(TurnError) as info:
        await client.create_permission(("2606:4700::1111", 9))
    assert info.value.code == 443
