"""Peer address policy: the relay must never become a way into the home network or the host.

Every peer address is checked in each of its forms with integer range comparisons: the address
itself and, for IPv6, the IPv4 address it embeds (IPv4-mapped ::ffff:0:0/96, IPv4-compatible
::/96, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32 client and
server). A form is accepted when it is in the allow-list, refused when it is in the deny-list,
and the address is relayed only when no form is refused. So allowing the NAT64 prefix does not
open a private IPv4 address behind it, and `::ffff:127.0.0.1` is refused like 127.0.0.1.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

# IANA special-purpose registries (RFC 6890 and later) plus multicast and the deprecated ranges.
DEFAULT_DENY: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network" (RFC 791)
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # shared address space, CGNAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, incl. 169.254.169.254 cloud metadata
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # TEST-NET-1 documentation
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",  # TEST-NET-3
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, incl. 255.255.255.255 broadcast
    "::/128",  # unspecified
    "::1/128",  # loopback
    "::/96",  # IPv4-compatible (deprecated)
    "::ffff:0:0/96",  # IPv4-mapped
    "64:ff9b::/96",  # NAT64 well-known prefix
    "64:ff9b:1::/48",  # NAT64 local-use prefix
    "100::/64",  # discard-only
    "2001::/23",  # IETF protocol assignments (Teredo, benchmarking, ORCHID, ...)
    "2001:db8::/32",  # documentation
    "2002::/16",  # 6to4
    "3fff::/20",  # documentation (RFC 9637)
    "5f00::/16",  # SRv6 SIDs
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)
LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

_MASK32 = 0xFFFFFFFF


class RangeSet:
    """Disjoint sorted integer ranges of one address family; membership by bisection."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[tuple[int, int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self._starts = [start for start, _ in merged]
        self._ends = [end for _, end in merged]

    def __contains__(self, value: int) -> bool:
        index = bisect.bisect_right(self._starts, value) - 1
        return index >= 0 and value <= self._ends[index]


@dataclass(frozen=True)
class _Lists:
    v4: RangeSet
    v6: RangeSet

    @classmethod
    def of(cls, cidrs: Iterable[str]) -> _Lists:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for text in cidrs:
            net = ipaddress.ip_network(text, strict=False)
            span = (int(net.network_address), int(net.broadcast_address))
            (v4 if net.version == 4 else v6).append(span)
        return cls(RangeSet(v4), RangeSet(v6))

    def has(self, version: int, value: int) -> bool:
        return value in (self.v4 if version == 4 else self.v6)


def address_forms(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[tuple[int, int]]:
    """(version, integer) of the address and of every IPv4 address it embeds."""
    value = int(address)
    forms: list[tuple[int, int]] = [(address.version, value)]
    if address.version == 4:
        return forms
    top96, top48, top32, top16 = value >> 32, value >> 80, value >> 96, value >> 112
    if (top96 == 0 and value > 1) or top96 == 0xFFFF or top96 == 0x0064FF9B << 64:
        # IPv4-compatible ::/96 (not :: or ::1), IPv4-mapped ::ffff:0:0/96, NAT64 64:ff9b::/96.
        forms.append((4, value & _MASK32))
    if top48 == 0x0064FF9B0001:
        # RFC 6052 §2.2 /48: IPv4 bits 48-63 and 72-87 around the zero u-octet.
        forms.append((4, ((value >> 64) & 0xFFFF) << 16 | (value >> 40) & 0xFFFF))
    if top16 == 0x2002:
        forms.append((4, (value >> 80) & _MASK32))  # 6to4 (RFC 3056)
    if top32 == 0x20010000:
        forms.append((4, (value >> 64) & _MASK32))  # Teredo server (RFC 4380)
        forms.append((4, ~value & _MASK32))  # Teredo client, obfuscated
    return forms


class PeerPolicy:
    """Decides whether the relay may send to a peer address."""

    def __init__(
        self, *, allow: Iterable[str] = (), deny: Iterable[str] = (), allow_loopback: bool = False
    ) -> None:
        self._allow = _Lists.of([*allow, *(LOOPBACK if allow_loopback else ())])
        self._deny = _Lists.of([*DEFAULT_DENY, *deny])
        self.allow_loopback = allow_loopback

    def refusal(self, host: str) -> str | None:
        """None when `host` may be a peer, else the form that is refused (for logs)."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host
        for version, value in address_forms(address):
            if self._allow.has(version, value):
                continue
            if self._deny.has(version, value):
                return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))
        return None

    def allows(self, host: str) -> bool:
        """Whether the relay may send to `host`."""
        return self.refusal(host) is None
