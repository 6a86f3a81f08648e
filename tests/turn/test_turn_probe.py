"""STUN client: HOST[:PORT] parsing, probes of the node's own server (no RFC 5780), of coturn with
two addresses (a real RFC 5780 server) and of a scripted RFC 5780 server that plays each NAT
mapping and filtering behaviour; the periodic prober."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from node.turn import StunProber, format_report, parse_server, probe_nat
from wire.stun import (
    Attr,
    Attribute,
    ChangeRequest,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    decode_change_request_untrusted,
    decode_message_untrusted,
    encode_address,
    encode_message,
    encode_xor_address,
)

from .conftest import base_settings, free_udp_port, start_turn

ALT_IP = "127.0.0.2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stun.example.org", ("stun.example.org", 3478)),
        ("stun.example.org:19302", ("stun.example.org", 19302)),
        ("192.0.2.1:5", ("192.0.2.1", 5)),
        ("[2001:db8::1]:3479", ("2001:db8::1", 3479)),
        ("[2001:db8::1]", ("2001:db8::1", 3478)),
        ("2001:db8::1", ("2001:db8::1", 3478)),
    ],
)
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["", ":3478", "host:0", "host:70000", "host:x"])
def test_parse_server_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST|invalid literal"):
        parse_server(text)


async def test_probe_of_the_node_itself_reports_no_rfc5780(nursery: trio.Nursery) -> None:
    turn = await start_turn(nursery, base_settings())
    report = await probe_nat(f"127.0.0.1:{turn.udp[1]}", timeout_s=2)
    assert report.ok and report.public_address is not None
    assert report.public_address == report.local_address and report.behind_nat is False
    assert not report.rfc5780 and report.mapping is None and "RFC 5780" in report.note
    assert "not supported" in format_report(report)


async def test_probe_timeout_is_reported(autojump_clock: Any) -> None:
    report = await probe_nat(f"127.0.0.1:{free_udp_port()}", timeout_s=2)
    assert not report.ok and report.error is not None and "no answer" in report.error
    assert "probe failed" in format_report(report)


@pytest.fixture
def coturn_5780(require_program: Any) -> Iterator[int]:
    """coturn listening on 127.0.0.1 and 127.0.0.2: it then answers RFC 5780 requests."""
    path = require_program("turnserver")
    for _ in range(3):  # the free port (or port + 1, its RFC 5780 alternate) may be taken meanwhile
        port = free_udp_port()
        proc = subprocess.Popen(
            [path, "-n", "--listening-ip", "127.0.0.1", "--listening-ip", ALT_IP, "--listening-port", str(port),
             "--no-tls", "--no-dtls", "--no-cli", "--no-stdout-log", "--log-file", "stdout"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            if _stun_ready(("127.0.0.1", port)):
                yield port
                return
        finally:
            _stop(proc)
    raise RuntimeError("turnserver did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _stun_ready(address: tuple[str, int]) -> bool:
    """Poll with Binding requests until the server answers (bounded); not a sleep."""
    request = encode_message(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        for _ in range(50):
            sock.sendto(request, address)
            try:
                sock.recv(2048)
                return True
            except OSError:
                continue
    return False


async def test_probe_against_coturn_with_rfc5780(coturn_5780: int) -> None:
    report = await probe_nat(f"127.0.0.1:{coturn_5780}", timeout_s=2)
    assert report.ok and report.rfc5780, report
    assert report.behind_nat is False
    assert (report.mapping, report.filtering) == ("endpoint-independent", "endpoint-independent")


class Scripted5780:
    """An RFC 5780 server on four loopback sockets that plays a NAT in front of the client:
    `mapping` decides the reported mapped port, `filtering` which changed-address answers get
    through."""

    def __init__(self, mapping: str, filtering: str) -> None:
        self.mapping, self.filtering = mapping, filtering
        self.socks: dict[tuple[str, int], Any] = {}

    async def open(self) -> None:
        port_a = port_b = 0
        for ip in ("127.0.0.1", ALT_IP):
            for which in ("a", "b"):
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                await sock.bind((ip, port_a if which == "a" else port_b))
                bound = sock.getsockname()[1]
                port_a, port_b = (bound, port_b) if which == "a" else (port_a, bound)
                self.socks[(ip, bound)] = sock
        self.primary = ("127.0.0.1", port_a)
        self.other = (ALT_IP, port_b)

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()

    def mapped_port(self, client: tuple[str, int], local: tuple[str, int]) -> int:
        if self.mapping == "endpoint-independent":
            return client[1] + 1
        if self.mapping == "address-dependent":
            return client[1] + (2 if local[0] == ALT_IP else 3)
        return client[1] + (4 if local[0] == ALT_IP else 5) + (10 if local[1] == self.other[1] else 0)

    def passes(self, change: int) -> bool:
        if self.filtering == "endpoint-independent":
            return True
        if self.filtering == "address-dependent":
            return not change & ChangeRequest.IP
        return change == 0

    async def serve(self, local: tuple[str, int], task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = self.socks[local]
        task_status.started()
        while True:
            data, client = await sock.recvfrom(2048)
            try:
                request = decode_message_untrusted(data)
            except StunDecodeError:
                continue
            value = request.get(Attr.CHANGE_REQUEST)
            change = decode_change_request_untrusted(value) if value else 0
            if not self.passes(change):
                continue
            ip = (
                (ALT_IP if local[0] == "127.0.0.1" else "127.0.0.1")
                if change & ChangeRequest.IP
                else local[0]
            )
            port = self._other_port(local[1]) if change & ChangeRequest.PORT else local[1]
            tid = request.transaction_id
            attrs = (
                Attribute(
                    Attr.XOR_MAPPED_ADDRESS,
                    encode_xor_address(client[0], self.mapped_port(client, local), tid),
                ),
                Attribute(Attr.OTHER_ADDRESS, encode_address(*self.other)),
                Attribute(Attr.RESPONSE_ORIGIN, encode_address(ip, port)),
            )
            reply = encode_message(
                Message(Method.BINDING, MessageClass.SUCCESS, tid, attrs), fingerprint=True
            )
            await self.socks[(ip, port)].sendto(reply, client)

    def _other_port(self, port: int) -> int:
        return self.other[1] if port == self.primary[1] else self.primary[1]


BEHAVIOURS = ["endpoint-independent", "address-dependent", "address-and-port-dependent"]


@pytest.mark.parametrize("mapping", BEHAVIOURS)
@pytest.mark.parametrize("filtering", BEHAVIOURS)
async def test_probe_classifies_nat_behaviour(autojump_clock: Any, mapping: str, filtering: str) -> None:
    server = Scripted5780(mapping, filtering)
    await server.open()
    try:
        async with trio.open_nursery() as nursery:
            for local in server.socks:
                await nursery.start(server.serve, local)
            report = await probe_nat(f"127.0.0.1:{server.primary[1]}", timeout_s=1)
            nursery.cancel_scope.cancel()
    finally:
        server.close()
    assert report.ok and report.rfc5780 and report.behind_nat, report
    assert (report.mapping, report.filtering) == (mapping, filtering)


async def test_periodic_prober(nursery: trio.Nursery, autojump_clock: Any) -> None:
    turn = await start_turn(nursery, base_settings(relay_thread=False))
    prober = StunProber([], interval_s=60, timeout_s=1)
    await nursery.start(prober.run)
    await trio.sleep(1)
    assert prober.latest() is None
    unreachable = f"127.0.0.1:{free_udp_port()}"
    prober.configure([unreachable], interval_s=60, timeout_s=1)
    await trio.sleep(5)
    failed = prober.latest()
    assert failed is not None and not failed.ok
    prober.configure([unreachable, f"127.0.0.1:{turn.udp[1]}"], interval_s=60, timeout_s=1)
    await trio.sleep(5)
    latest = prober.latest()
    assert latest is not None and latest.ok and latest.public_address is not None
    assert len(prober.reports()) == 2
    await trio.sleep(61)
    assert prober.latest() is not latest  # probed again after the interval


async def test_service_statistics_include_the_probe(nursery: trio.Nursery, autojump_clock: Any) -> None:
    target = await start_turn(nursery, base_settings(relay_thread=False))
    node = await start_turn(
        nursery, base_settings(relay_thread=False, probe_servers=[f"127.0.0.1:{target.udp[1]}"])
    )
    await trio.sleep(5)
    probe = node.service.statistics().probe
    assert probe is not None and probe.ok and probe.public_address is not None
    assert node.service.statistics().as_dict()["probe"]["public_address"] == probe.public_address
