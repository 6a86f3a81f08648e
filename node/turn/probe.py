"""STUN client: Binding probes and RFC 5780 NAT behaviour discovery, plus a periodic prober.

`probe_nat("HOST[:PORT]")` reports this node's public (mapped) address and, when the server
supports RFC 5780 (its Binding response carries OTHER-ADDRESS and it honours CHANGE-REQUEST), the
NAT's mapping (§4.3) and filtering (§4.4) behaviour; otherwise it says clearly why they are unknown.
Transactions retransmit with a doubling RTO (RFC 8489 §6.2.1) within a deadline.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import asdict, dataclass

import trio

from wire.stun import (
    Attr,
    Attribute,
    ChangeRequest,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    decode_address_untrusted,
    decode_error_code_untrusted,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_change_request,
    encode_message,
)

DEFAULT_PORT = 3478
_RECV_BYTES = 2048

EIM = "endpoint-independent"
ADM = "address-dependent"
APDM = "address-and-port-dependent"


class ProbeError(Exception):
    """A probe could not be completed (timeout, error response, bad answer)."""


def parse_server(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split `HOST`, `HOST:PORT`, `[IPV6]:PORT` or a bare IPv6 address.

    Raises:
        ValueError: an empty host or a bad port.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    port = int(port_text) if port_text else default_port
    if not host or not 0 < port <= 0xFFFF:
        raise ValueError(f"not HOST[:PORT]: {text!r}")
    return host, port


@dataclass(frozen=True)
class BindingResult:
    """One Binding transaction's answer."""

    mapped: tuple[str, int]
    source: tuple[str, int]
    other: tuple[str, int] | None
    origin: tuple[str, int] | None
    rtt_ms: float


@dataclass(frozen=True)
class ProbeReport:
    """What a probe of one server found out."""

    server: str
    at: float
    ok: bool
    error: str | None = None
    public_address: tuple[str, int] | None = None
    local_address: tuple[str, int] | None = None
    rtt_ms: float | None = None
    behind_nat: bool | None = None
    rfc5780: bool = False
    mapping: str | None = None
    filtering: str | None = None
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


async def _resolve(host: str, port: int, timeout_s: float) -> tuple[int, tuple[str, int]]:
    with trio.move_on_after(timeout_s) as scope:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if scope.cancelled_caught:
        raise ProbeError(f"cannot resolve {host} within {timeout_s:g} s")
    if not infos:
        raise ProbeError(f"cannot resolve {host}")
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


async def binding_transaction(
    sock: trio.socket.SocketType,
    server: tuple[str, int],
    *,
    timeout_s: float,
    change: int = 0,
) -> BindingResult:
    """Send a Binding request from `sock` to `server` and wait for its answer from any source.

    Raises:
        ProbeError: timeout, an error response or an unusable answer.
    """
    tid = os.urandom(12)
    attrs = (Attribute(Attr.CHANGE_REQUEST, encode_change_request(change)),) if change else ()
    request = encode_message(Message(Method.BINDING, MessageClass.REQUEST, tid, attrs), fingerprint=True)
    start = trio.current_time()
    rto = min(0.5, timeout_s / 4)
    with trio.move_on_after(timeout_s):
        while True:
            await sock.sendto(request, server)
            with trio.move_on_after(rto):
                return await _await_answer(sock, tid, start)
            rto *= 2
    raise ProbeError(f"no answer from {server[0]}:{server[1]} within {timeout_s:g} s")


async def _await_answer(sock: trio.socket.SocketType, tid: bytes, start: float) -> BindingResult:
    while True:
        data, source = await sock.recvfrom(_RECV_BYTES)
        try:
            message = decode_message_untrusted(data)
        except StunDecodeError:
            continue
        if message.transaction_id != tid or message.method != Method.BINDING:
            continue
        try:
            return _result(message, (source[0], source[1]), (trio.current_time() - start) * 1000)
        except StunDecodeError as exc:
            raise ProbeError(f"unusable Binding response: {exc}") from None


def _result(message: Message, source: tuple[str, int], rtt_ms: float) -> BindingResult:
    if message.cls == MessageClass.ERROR:
        value = message.get(Attr.ERROR_CODE)
        code, reason = decode_error_code_untrusted(value) if value else (0, "")
        raise ProbeError(f"error response {code} {reason}".strip())
    mapped_value = message.get(Attr.XOR_MAPPED_ADDRESS)
    if mapped_value is not None:
        mapped = decode_xor_address_untrusted(mapped_value, message.transaction_id)
    elif (legacy := message.get(Attr.MAPPED_ADDRESS)) is not None:
        mapped = decode_address_untrusted(legacy)
    else:
        raise ProbeError("Binding response without a mapped address")
    other = message.get(Attr.OTHER_ADDRESS)
    origin = message.get(Attr.RESPONSE_ORIGIN)
    return BindingResult(
        mapped=mapped,
        source=source,
        other=decode_address_untrusted(other) if other else None,
        origin=decode_address_untrusted(origin) if origin else None,
        rtt_ms=rtt_ms,
    )


def _local_ip(family: int, server: tuple[str, int]) -> str:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(server)  # a route lookup; sends nothing
        return str(probe.getsockname()[0])


async def probe_nat(target: str, *, timeout_s: float = 3.0) -> ProbeReport:
    """Probe the STUN server `target` (HOST[:PORT]); never raises for network trouble."""
    at = time.time()
    try:
        host, port = parse_server(target)
        family, server = await _resolve(host, port, timeout_s)
        with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
            await sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))  # noqa: S104
            local = (_local_ip(family, server), sock.getsockname()[1])
            return await _discover(sock, target, server, local, at, timeout_s)
    except (OSError, ValueError, ProbeError) as exc:
        return ProbeReport(server=target, at=at, ok=False, error=str(exc) or type(exc).__name__)


async def _discover(
    sock: trio.socket.SocketType, target: str, server: tuple[str, int], local: tuple[str, int], at: float,
    timeout_s: float,
) -> ProbeReport:  # fmt: skip
    first = await binding_transaction(sock, server, timeout_s=timeout_s)
    report = ProbeReport(
        server=target, at=at, ok=True, public_address=first.mapped, local_address=local,
        rtt_ms=round(first.rtt_ms, 3), behind_nat=first.mapped != local,
    )  # fmt: skip
    if first.other is None:
        note = "server does not support RFC 5780 (no OTHER-ADDRESS): NAT mapping and filtering not determined"
        return _replace(report, note=note)
    if first.other[0] == server[0] or first.other[1] == server[1]:
        note = "server's OTHER-ADDRESS does not differ in both address and port: behaviour not determined"
        return _replace(report, note=note)
    mapping = EIM if first.mapped == local else await _mapping(sock, server, first, timeout_s)
    filtering, note = await _filtering(sock, server, timeout_s)
    return _replace(report, rfc5780=True, mapping=mapping, filtering=filtering, note=note)


def _replace(report: ProbeReport, **changes: object) -> ProbeReport:
    return ProbeReport(**{**asdict(report), **changes})


async def _mapping(
    sock: trio.socket.SocketType, server: tuple[str, int], first: BindingResult, timeout_s: float
) -> str:
    assert first.other is not None
    second = await binding_transaction(sock, (first.other[0], server[1]), timeout_s=timeout_s)
    if second.mapped == first.mapped:
        return EIM
    third = await binding_transaction(sock, first.other, timeout_s=timeout_s)
    return ADM if third.mapped == second.mapped else APDM


async def _filtering(
    sock: trio.socket.SocketType, server: tuple[str, int], timeout_s: float
) -> tuple[str | None, str]:
    try:
        await binding_transaction(
            sock, server, timeout_s=timeout_s, change=ChangeRequest.IP | ChangeRequest.PORT
        )
        return EIM, ""
    except ProbeError as exc:
        if "error response" in str(exc):
            return None, f"server refused CHANGE-REQUEST ({exc}): filtering not determined"
    try:
        await binding_transaction(sock, server, timeout_s=timeout_s, change=ChangeRequest.PORT)
        return ADM, ""
    except ProbeError as exc:
        if "error response" in str(exc):
            return None, f"server refused CHANGE-REQUEST ({exc}): filtering not determined"
    return APDM, ""


def format_report(report: ProbeReport) -> str:
    """Human-readable lines for `asgard stun-probe`."""
    if not report.ok:
        return f"{report.server}: probe failed: {report.error}"
    lines = [
        f"server:          {report.server}",
        f"public address:  {_addr(report.public_address)}",
        f"local address:   {_addr(report.local_address)}",
        f"behind NAT:      {'yes' if report.behind_nat else 'no'}",
        f"round trip:      {report.rtt_ms} ms",
        f"RFC 5780:        {'supported' if report.rfc5780 else 'not supported'}",
    ]
    if report.rfc5780:
        lines += [f"NAT mapping:     {report.mapping}", f"NAT filtering:   {report.filtering or 'unknown'}"]
    if report.note:
        lines.append(f"note:            {report.note}")
    return "\n".join(lines)


def _addr(address: tuple[str, int] | None) -> str:
    if address is None:
        return "-"
    return f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"


class StunProber:
    """Probes the configured servers every `interval_s`; `latest()` is the newest report."""

    def __init__(self, servers: list[str], interval_s: float, timeout_s: float) -> None:
        self._servers = list(servers)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._reports: dict[str, ProbeReport] = {}
        self._changed = trio.Event()

    def configure(self, servers: list[str], interval_s: float, timeout_s: float) -> None:
        """Adopt new settings (live) and probe again soon."""
        if (list(servers), interval_s, timeout_s) != (self._servers, self._interval_s, self._timeout_s):
            self._servers, self._interval_s, self._timeout_s = list(servers), interval_s, timeout_s
            self._reports = {k: v for k, v in self._reports.items() if k in self._servers}
            self._changed.set()

    def reports(self) -> list[ProbeReport]:
        """The newest report of every configured server."""
        return [self._reports[s] for s in self._servers if s in self._reports]

    def latest(self) -> ProbeReport | None:
        """The newest successful report, else the newest failure, else None."""
        reports = sorted(self.reports(), key=lambda r: (r.ok, r.at))
        return reports[-1] if reports else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe forever (until cancelled)."""
        task_status.started()
        while True:
            for server in list(self._servers):
                self._reports[server] = await probe_nat(server, timeout_s=self._timeout_s)
            wait = self._interval_s if self._servers else math.inf
            with trio.move_on_after(wait):
                await self._changed.wait()
            self._changed = trio.Event()
