"""TURN service over real loopback sockets: Binding, Allocate, permissions, channels, Send/Data,
TCP framing, ICMP, EVEN-PORT reservations, error answers and statistics."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import pytest
import trio

from wire.stun import (
    Attr,
    Attribute,
    Message,
    MessageClass,
    Method,
    decode_error_code_untrusted,
    decode_icmp_untrusted,
    decode_message_untrusted,
    decode_u32_untrusted,
    decode_unknown_attributes_untrusted,
    decode_xor_address_untrusted,
    encode_even_port,
    encode_message,
    encode_requested_transport,
)

from .conftest import TIMEOUT_S, EchoPeer, RunningTurn, TurnError, base_settings, start_turn


async def binding(client: Any) -> Message:
    tid = os.urandom(12)
    return await client.transact(
        encode_message(Message(Method.BINDING, MessageClass.REQUEST, tid), fingerprint=True)
    )


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_binding_reports_the_mapped_address(
    turn: RunningTurn, client_factory: Any, transport: str
) -> None:
    client = await client_factory(turn.udp if transport == "udp" else turn.tcp, transport=transport)
    response = await binding(client)
    assert response.cls == MessageClass.SUCCESS
    value = response.get(Attr.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert decode_xor_address_untrusted(value, response.transaction_id) == client.local
    assert response.get(Attr.SOFTWARE) == b"asgard"


async def test_binding_with_change_request_gets_420(turn: RunningTurn, client_factory: Any) -> None:
    client = await client_factory(turn.udp)
    tid = os.urandom(12)
    request = Message(Method.BINDING, MessageClass.REQUEST, tid, (Attribute(Attr.CHANGE_REQUEST, bytes(4)),))
    response = await client.transact(encode_message(request))
    assert decode_error_code_untrusted(response.get(Attr.ERROR_CODE) or b"")[0] == 420
    unknown = response.get(Attr.UNKNOWN_ATTRIBUTES)
    assert unknown is not None and decode_unknown_attributes_untrusted(unknown) == (Attr.CHANGE_REQUEST,)


async def _relay_round_trip(client: Any, echo: EchoPeer, relayed: tuple[str, int]) -> None:
    await client.create_permission(echo.address)
    await client.send_indication(echo.address, b"via-send")
    with trio.fail_after(TIMEOUT_S):
        kind, peer, data = await client.receive_data()
    assert (kind, peer, data) == ("data", echo.address, b"via-send")
    assert echo.received[-1] == (b"via-send", relayed)
    await client.channel_bind(0x4001, echo.address)
    for size in (0, 1, 3, 64, 1200, 4096):
        payload = os.urandom(size)
        await client.send_channel(0x4001, payload)
        with trio.fail_after(TIMEOUT_S):
            assert await client.receive_data() == ("channel", 0x4001, payload)


@pytest.mark.parametrize("relay_thread", [True, False], ids=["relay-thread", "trio-only"])
async def test_udp_relay_round_trips(
    nursery: trio.Nursery, client_factory: Any, echo_peer: EchoPeer, relay_thread: bool
) -> None:
    turn = await start_turn(nursery, base_settings(relay_thread=relay_thread))
    client = await client_factory(turn.udp)
    relayed = await client.allocate()
    assert relayed[0] == "127.0.0.1"
    await _relay_round_trip(client, echo_peer, relayed)
    # The relay thread counts a datagram just after sending it; a Binding round trip passes
    # through the same thread afterwards, so the counts are final when it is answered.
    await binding(client)
    stats = turn.service.statistics()
    assert (stats.allocations, stats.permissions, stats.channels) == (1, 1, 1)
    assert stats.relayed["to_peer_datagrams"] == 7
    assert stats.relayed["to_client_datagrams"] == 7
    assert stats.relayed["to_peer_bytes"] == len(b"via-send") + 0 + 1 + 3 + 64 + 1200 + 4096


async def test_tcp_relay_round_trips_and_closing_deletes_the_allocation(
    turn: RunningTurn, client_factory: Any, echo_peer: EchoPeer
) -> None:
    client = await client_factory(turn.tcp, transport="tcp")
    relayed = await client.allocate()
    await _relay_round_trip(client, echo_peer, relayed)
    assert turn.service.statistics().tcp_connections == 1
    await client.aclose()
    client.stream = None
    with trio.fail_after(TIMEOUT_S):
        while turn.service.statistics().allocations:
            await trio.sleep(0)
    assert turn.service.statistics().tcp_connections == 0


async def test_tcp_several_messages_in_one_write_and_byte_by_byte(
    turn: RunningTurn, client_factory: Any
) -> None:
    client = await client_factory(turn.tcp, transport="tcp")
    tids = [os.urandom(12) for _ in range(3)]
    requests = [
        encode_message(Message(Method.BINDING, MessageClass.REQUEST, t), fingerprint=True) for t in tids
    ]
    await client.send_raw(requests[0] + requests[1])
    for byte in requests[2]:
        await client.send_raw(bytes([byte]))
    with trio.fail_after(TIMEOUT_S):
        for tid in tids:
            raw = await client.next_matching(lambda r, tid=tid: r[8:20] == tid)
            assert decode_message_untrusted(raw).cls == MessageClass.SUCCESS


async def test_tcp_garbage_closes_the_connection(turn: RunningTurn, client_factory: Any) -> None:
    client = await client_factory(turn.tcp, transport="tcp")
    await client.send_raw(b"\x80" * 64)
    with trio.fail_after(TIMEOUT_S), pytest.raises(EOFError):
        await client.next_matching(lambda r: True)


async def test_icmp_from_a_closed_peer_port_reaches_the_client(
    turn: RunningTurn, client_factory: Any
) -> None:
    client = await client_factory(turn.udp)
    await client.allocate()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        peer = closed.getsockname()
    await client.channel_bind(0x4002, peer)
    await client.send_channel(0x4002, b"anyone there?")
    with trio.fail_after(TIMEOUT_S):
        kind, source, value = await client.receive_data()
    assert (kind, source) == ("icmp", peer)
    assert decode_icmp_untrusted(value)[:2] == (3, 3)  # destination unreachable, port unreachable


async def test_peer_without_permission_is_not_delivered(
    turn: RunningTurn, client_factory: Any, echo_peer: EchoPeer
) -> None:
    client = await client_factory(turn.udp)
    relayed = await client.allocate()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.sendto(b"unsolicited", relayed)
        await client.create_permission(echo_peer.address)
        await client.send_indication(echo_peer.address, b"marker")
        with trio.fail_after(TIMEOUT_S):
            assert await client.receive_data() == ("data", echo_peer.address, b"marker")
    assert turn.service.statistics().drops.get("no-permission") == 1


async def test_even_port_reservation_and_token(turn: RunningTurn, client_factory: Any) -> None:
    first = await client_factory(turn.udp)
    response = await first.request(
        Method.ALLOCATE,
        [
            Attribute(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)),
            Attribute(Attr.EVEN_PORT, encode_even_port(True)),
        ],
    )
    relayed = decode_xor_address_untrusted(
        response.get(Attr.XOR_RELAYED_ADDRESS) or b"", response.transaction_id
    )
    token = response.get(Attr.RESERVATION_TOKEN)
    assert relayed[1] % 2 == 0 and token is not None and len(token) == 8
    second = await client_factory(turn.udp)
    relayed2 = await second.allocate([Attribute(Attr.RESERVATION_TOKEN, token)])
    assert relayed2 == (relayed[0], relayed[1] + 1)
    third = await client_factory(turn.udp)
    with pytest.raises(TurnError) as info:
        await third.allocate([Attribute(Attr.RESERVATION_TOKEN, token)])
    assert info.value.code == 508


async def test_allocate_errors(turn: RunningTurn, client_factory: Any) -> None:
    client = await client_factory(turn.udp)
    with pytest.raises(TurnError) as info:
        await client.request(
            Method.ALLOCATE, [Attribute(Attr.REQUESTED_TRANSPORT, encode_requested_transport(6))]
        )
    assert info.value.code == 442
    with pytest.raises(TurnError) as info:
        await client.request(Method.ALLOCATE, [])
    assert info.value.code == 400
    with pytest.raises(TurnError) as info:
        await client.allocate([Attribute(Attr.REQUESTED_ADDRESS_FAMILY, b"\x02\x00\x00\x00")])
    assert info.value.code == 440
    with pytest.raises(TurnError) as info:
        await client.allocate([Attribute(0x7ABC, b"x")])
    assert info.value.code == 420
    assert info.value.response.has(Attr.MESSAGE_INTEGRITY)  # answered with integrity after auth
    with pytest.raises(TurnError) as info:
        await client.refresh()
    assert info.value.code == 437


async def test_allocate_retransmission_and_mismatch(turn: RunningTurn, client_factory: Any) -> None:
    client = await client_factory(turn.udp)
    await client.allocate()  # learns realm and nonce
    await client.refresh(0)
    tid = os.urandom(12)
    attrs = [Attribute(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))]
    first = await client.transact(client.build(Method.ALLOCATE, attrs, tid=tid))
    again = await client.transact(client.build(Method.ALLOCATE, attrs, tid=tid))
    assert first.cls == again.cls == MessageClass.SUCCESS
    assert first.get(Attr.XOR_RELAYED_ADDRESS) == again.get(Attr.XOR_RELAYED_ADDRESS)
    other = await client.transact(client.build(Method.ALLOCATE, attrs))
    assert decode_error_code_untrusted(other.get(Attr.ERROR_CODE) or b"")[0] == 437


async def test_refresh_clamps_and_zero_deletes(turn: RunningTurn, client_factory: Any) -> None:
    client = await client_factory(turn.udp)
    await client.allocate(lifetime=30)
    response = await client.refresh(100_000)
    assert decode_u32_untrusted(response.get(Attr.LIFETIME) or b"") == 3600
    response = await client.refresh(1)
    assert decode_u32_untrusted(response.get(Attr.LIFETIME) or b"") == 600
    response = await client.refresh(0)
    assert decode_u32_untrusted(response.get(Attr.LIFETIME) or b"") == 0
    assert turn.service.statistics().allocations == 0


async def test_wrong_credentials_on_an_existing_allocation(
    nursery: trio.Nursery, client_factory: Any
) -> None:
    turn = await start_turn(nursery, base_settings(users={"test": "secret", "other": "pw"}))
    client = await client_factory(turn.udp)
    await client.allocate()
    client.username, client.password = "other", "pw"
    with pytest.raises(TurnError) as info:
        await client.refresh()
    assert info.value.code == 441


async def test_malformed_request_gets_400_and_garbage_is_dropped(
    turn: RunningTurn, client_factory: Any
) -> None:
    client = await client_factory(turn.udp)
    tid = os.urandom(12)
    bad = Message(Method.ALLOCATE, MessageClass.REQUEST, tid, (Attribute(Attr.MESSAGE_INTEGRITY, b"short"),))
    response = await client.transact(encode_message(bad))
    assert decode_error_code_untrusted(response.get(Attr.ERROR_CODE) or b"")[0] == 400
    await client.send_raw(b"\x01\x01garbage that is not STUN")
    await client.send_raw(b"\xff" * 30)
    assert (await binding(client)).cls == MessageClass.SUCCESS
    drops = turn.service.statistics().drops
    assert drops.get("malformed", 0) + drops.get("not-stun", 0) == 2


async def test_unknown_method_gets_400(turn: RunningTurn, client_factory: Any) -> None:
    client = await client_factory(turn.udp)
    response = await client.transact(encode_message(Message(0x0AB, MessageClass.REQUEST, os.urandom(12))))
    assert response.cls == MessageClass.ERROR
    assert decode_error_code_untrusted(response.get(Attr.ERROR_CODE) or b"")[0] == 400


async def test_unauthenticated_allocate_is_challenged(turn: RunningTurn, client_factory: Any) -> None:
    client = await client_factory(turn.udp)
    request = client.build(
        Method.ALLOCATE, [Attribute(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))]
    )
    response = await client.transact(request)
    assert decode_error_code_untrusted(response.get(Attr.ERROR_CODE) or b"")[0] == 401
    assert response.get(Attr.REALM) == b"asgard.test"
    nonce = response.get(Attr.NONCE)
    assert nonce is not None and nonce.startswith(b"obMatJos2AAAD")
    assert response.get(Attr.PASSWORD_ALGORITHMS) is not None
    assert not response.has(Attr.MESSAGE_INTEGRITY)
    assert turn.service.statistics().refusals["challenge"] == 1


async def test_decoded_replies_are_well_formed(turn: RunningTurn, client_factory: Any) -> None:
    client = await client_factory(turn.udp)
    await client.allocate()
    response = await client.refresh()
    assert response.has(Attr.FINGERPRINT)
    assert response.has(Attr.MESSAGE_INTEGRITY)
    assert decode_message_untrusted(response.raw) == response


@pytest.mark.parametrize("relay_thread", [True, False], ids=["relay-thread", "trio-only"])
async def test_a_bug_in_request_handling_does_not_stop_the_service(
    nursery: trio.Nursery, client_factory: Any, monkeypatch: pytest.MonkeyPatch, relay_thread: bool
) -> None:
    turn = await start_turn(nursery, base_settings(relay_thread=relay_thread))
    client = await client_factory(turn.udp)
    original = turn.service._protocol.handle
    calls = 0

    def flaky(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected bug")
        return original(*args)

    monkeypatch.setattr(turn.service._protocol, "handle", flaky)
    await client.send_raw(encode_message(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))))
    assert (await binding(client)).cls == MessageClass.SUCCESS
    assert turn.service.statistics().drops["internal-error"] == 1


async def test_bandwidth_cap_changes_live(
    turn: RunningTurn, client_factory: Any, echo_peer: EchoPeer
) -> None:
    client = await client_factory(turn.udp)
    await client.allocate()
    await client.channel_bind(0x4001, echo_peer.address)
    turn.service.apply_settings(base_settings(bandwidth_limit_bytes_per_s=1024))
    for _ in range(80):
        await client.send_channel(0x4001, bytes(1000))
    await binding(client)
    assert turn.service.statistics().drops.get("bandwidth", 0) > 0


async def test_a_reset_tcp_connection_ends_only_its_session(turn: RunningTurn, client_factory: Any) -> None:
    for _ in range(3):
        doomed = await client_factory(turn.tcp, transport="tcp")
        await doomed.allocate()
        raw = doomed.stream.socket
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        await doomed.send_raw(encode_message(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))))
        await doomed.aclose()
        doomed.stream = None
    with trio.fail_after(TIMEOUT_S):
        while turn.service.statistics().tcp_connections:
            await trio.sleep(0)
    assert turn.service.statistics().allocations == 0
    survivor = await client_factory(turn.tcp, transport="tcp")
    assert (await binding(survivor)).cls == MessageClass.SUCCESS
