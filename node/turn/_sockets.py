"""Socket plumbing for the TURN service: relay binding in the port range, address discovery,
DF control and ICMP errors from the kernel error queue (Linux IP_RECVERR)."""

from __future__ import annotations

import errno
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from wire.stun import AddressFamily

# Linux constants (socket module lacks some of them).
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IP_PMTUDISC_DONT = 0
IP_PMTUDISC_DO = 2
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")
_PORT_TRIES = 128

AF_OF_FAMILY = {AddressFamily.IPV4: socket.AF_INET, AddressFamily.IPV6: socket.AF_INET6}


def udp_socket(af: int, buffer_bytes: int) -> socket.socket:
    """A non-blocking UDP socket with large buffers (IPv6 sockets are IPv6-only)."""
    sock = socket.socket(af, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for option, forced in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
            try:
                # Above net.core.[rw]mem_max only with CAP_NET_ADMIN; else the capped size.
                sock.setsockopt(socket.SOL_SOCKET, forced, buffer_bytes)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, option, buffer_bytes)
    except OSError:
        sock.close()
        raise
    return sock


def set_dont_fragment(sock: socket.socket, family: int, on: bool) -> None:
    """Set or clear DF on everything `sock` sends (RFC 8656 §7.2 DONT-FRAGMENT)."""
    value = IP_PMTUDISC_DO if on else IP_PMTUDISC_DONT
    if family == AddressFamily.IPV6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, value)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, value)


def enable_icmp_errors(sock: socket.socket, family: int) -> None:
    """Queue ICMP errors about sent datagrams on the socket's error queue."""
    if family == AddressFamily.IPV6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)


@dataclass(frozen=True, slots=True)
class IcmpError:
    """One ICMP error about a datagram sent to `peer`."""

    peer: tuple[str, int]
    icmp_type: int
    icmp_code: int
    info: int


def read_icmp_errors(sock: socket.socket, limit: int = 64) -> list[IcmpError]:
    """Drain up to `limit` entries of the error queue."""
    found: list[IcmpError] = []
    for _ in range(limit):
        try:
            _, ancillary, _, address = sock.recvmsg(1, 512, MSG_ERRQUEUE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        for level, kind, data in ancillary:
            if (level, kind) not in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)):
                continue
            if len(data) < _EXTENDED_ERR.size or not address:
                continue
            _, origin, icmp_type, icmp_code, _, info, _ = _EXTENDED_ERR.unpack_from(data)
            if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
                found.append(IcmpError((address[0], address[1]), icmp_type, icmp_code, info))
    return found


def bind_in_range(
    af: int, host: str, low: int, high: int, buffer_bytes: int, *, even: bool, reserve_next: bool
) -> tuple[socket.socket, socket.socket | None] | None:
    """Bind a UDP socket to a free port in [low, high] (even if asked; with the next port held
    too when `reserve_next`), trying random ports; None when none was free."""
    span = high - low + 1
    for _ in range(min(_PORT_TRIES, span)):
        port = low + random.randrange(span)
        if even or reserve_next:
            port &= ~1
            if port < low or (reserve_next and port + 1 > high):
                continue
        first = _try_bind(af, host, port, buffer_bytes)
        if first is None:
            continue
        if not reserve_next:
            return first, None
        second = _try_bind(af, host, port + 1, buffer_bytes)
        if second is not None:
            return first, second
        first.close()
    return None


def _try_bind(af: int, host: str, port: int, buffer_bytes: int) -> socket.socket | None:
    sock = udp_socket(af, buffer_bytes)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return None
        raise
    return sock


def default_route_address(af: int) -> str | None:
    """The local address the kernel would use for the default route (sends nothing)."""
    probe = "192.0.2.1" if af == socket.AF_INET else "2001:db8::1"
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((probe, 9))
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address in ("0.0.0.0", "::") else str(address)  # noqa: S104 - a comparison


def send_from_relay(sock: socket.socket, family: int, peer: tuple[str, int], data: bytes, df: bool) -> None:
    """Send one datagram from a relay socket, with DF for this datagram only when `df`
    (RFC 8656 §10.2: DONT-FRAGMENT in a Send indication).

    Raises:
        OSError: the datagram could not be sent.
    """
    if not df:
        sock.sendto(data, peer)
        return
    set_dont_fragment(sock, family, True)
    try:
        sock.sendto(data, peer)
    finally:
        set_dont_fragment(sock, family, False)


def tcp_listen_socket(af: int, host: str, port: int, backlog: int = 512) -> socket.socket:
    """A non-blocking listening TCP socket (IPv6 sockets are IPv6-only)."""
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_listeners(
    hosts: list[str],
    port: int,
    *,
    udp: bool,
    tcp: bool,
    buffer_bytes: int,
    on_skip: Callable[[str, OSError], None],
) -> tuple[list[socket.socket], list[socket.socket]]:
    """UDP and TCP listening sockets on one port for every host. Port 0 picks one free for both
    (retrying when the UDP port is taken for TCP); a host after the first whose address family or
    address is missing is skipped (reported to `on_skip`)."""
    for _ in range(8):
        try:
            return _bind_once(hosts, port, udp=udp, tcp=tcp, buffer_bytes=buffer_bytes, on_skip=on_skip)
        except OSError as exc:
            if port != 0 or exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")


def _bind_once(
    hosts: list[str],
    port: int,
    *,
    udp: bool,
    tcp: bool,
    buffer_bytes: int,
    on_skip: Callable[[str, OSError], None],
) -> tuple[list[socket.socket], list[socket.socket]]:
    bound: list[socket.socket] = []
    try:
        for index, host in enumerate(hosts):
            af = socket.AF_INET6 if ":" in host else socket.AF_INET
            mine: list[socket.socket] = []
            try:
                if udp:
                    mine.append(udp_socket(af, buffer_bytes))
                    mine[-1].bind((host, port))
                    port = port or mine[-1].getsockname()[1]
                if tcp:
                    mine.append(tcp_listen_socket(af, host, port))
                    port = port or mine[-1].getsockname()[1]
            except OSError as exc:
                for sock in mine:
                    sock.close()
                if index == 0 or exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                on_skip(host, exc)
                continue
            bound += mine
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return [s for s in bound if s.type == socket.SOCK_DGRAM], [
        s for s in bound if s.type == socket.SOCK_STREAM
    ]


def relay_hosts(
    hosts: list[str], configured: dict[int, str | None], external: dict[int, str | None]
) -> dict[int, tuple[str, str]]:
    """(bind address, announced address) per family: the configured one, else a specific listen
    address of that family, else the default route's address (IPv6 only when listening on '::')."""
    specific = [h for h in hosts if h not in ("0.0.0.0", "::")]  # noqa: S104 - a comparison
    found: dict[int, tuple[str, str]] = {}
    for family, af in ((AddressFamily.IPV4, socket.AF_INET), (AddressFamily.IPV6, socket.AF_INET6)):
        same = [h for h in specific if (":" in h) == (af == socket.AF_INET6)]
        bind = configured.get(family) or (same[0] if same else None)
        if bind is None and (af == socket.AF_INET or "::" in hosts):
            bind = default_route_address(af)
        if bind is not None:
            found[family] = (bind, external.get(family) or bind)
    return found
