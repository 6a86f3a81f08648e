"""Settings of the STUN/TURN service (the `[turn]` section).

Fields marked live (`json_schema_extra=LIVE`) are applied by `TurnService.apply_settings` while
the service runs: peer allow/deny lists, `allow_loopback_peers`, users, REST secrets, quotas,
lifetimes, the bandwidth cap, the nonce lifetime, SOFTWARE and the probe list. The others (listen
address and port, transports, relay addresses, port range, realm, buffers) need a restart.
"""

from __future__ import annotations

import ipaddress
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from node._section import LIVE, Section  # the submodule: node.config itself imports this module


class TurnSettings(Section):
    """STUN (RFC 8489) and TURN (RFC 8656) server, STUN client probe."""

    enabled: bool = Field(True, description="Run the STUN/TURN service.")
    host: str | None = Field(None, description="Listen address; default: server.host.")
    extra_hosts: list[str] = Field(
        default_factory=list,
        description="More listen addresses on the same port, e.g. '::' for IPv6 (skipped with a "
        "warning when the host lacks that address family).",
    )
    port: int = Field(3478, ge=0, le=65535, description="UDP and TCP port (0 = any free port).")
    udp: bool = Field(True, description="Accept STUN/TURN clients over UDP.")
    tcp: bool = Field(True, description="Accept STUN/TURN clients over TCP (RFC 8656 §5).")
    realm: str = Field("asgard", min_length=1, max_length=127, description="Long-term credential realm.")
    relay_ipv4: str | None = Field(
        None,
        description="IPv4 address relay sockets bind to; default: the listen address when it is a "
        "specific IPv4 address, else the address of the default route.",
    )
    relay_ipv6: str | None = Field(
        None,
        description="IPv6 address relay sockets bind to; default: the listen address when it is a "
        "specific IPv6 address, else the address of the IPv6 default route, if any.",
    )
    external_ipv4: str | None = Field(
        None, description="IPv4 address announced as relayed address (1:1 NAT); default: relay_ipv4."
    )
    external_ipv6: str | None = Field(
        None, description="IPv6 address announced as relayed address; default: relay_ipv6."
    )
    public_host: str | None = Field(
        None,
        description="Host name or address put in the turn:/stun: URIs given to devices; default: "
        "the announced IPv4 relay address.",
    )
    relay_port_min: int = Field(49152, ge=1024, le=65535, description="Lowest relay port.")
    relay_port_max: int = Field(65535, ge=1024, le=65535, description="Highest relay port.")
    rfc5766_channels: bool = Field(
        True,
        description="Also accept channel numbers 0x5000-0x7FFF, which RFC 5766 allowed and RFC 8656 "
        "reserves (coturn's turnutils_uclient picks them); off: 0x4000-0x4FFF only.",
    )
    default_lifetime_s: int = Field(
        600, ge=60, le=86_400, description="Allocation lifetime when the client asks for less.",
        json_schema_extra=LIVE,
    )  # fmt: skip
    max_lifetime_s: int = Field(
        3600, ge=60, le=86_400, description="Longest allocation lifetime granted.", json_schema_extra=LIVE
    )
    max_allocations_per_user: int = Field(
        16, ge=1, le=100_000, description="Allocations one user may hold (486 above).",
        json_schema_extra=LIVE,
    )  # fmt: skip
    max_allocations_total: int = Field(
        1024, ge=1, le=1_000_000, description="Allocations the node holds in total (508 above).",
        json_schema_extra=LIVE,
    )  # fmt: skip
    max_permissions_per_allocation: int = Field(
        128, ge=1, le=65_536, description="Peer permissions per allocation (508 above).",
        json_schema_extra=LIVE,
    )  # fmt: skip
    max_channels_per_allocation: int = Field(
        128, ge=1, le=4096, description="Channel bindings per allocation (508 above).",
        json_schema_extra=LIVE,
    )  # fmt: skip
    bandwidth_limit_bytes_per_s: int | None = Field(
        None, ge=1024, description="Per-allocation relay cap in bytes/s (both directions); none by "
        "default. Datagrams over the cap are dropped and counted.", json_schema_extra=LIVE,
    )  # fmt: skip
    users: dict[str, SecretStr] = Field(
        default_factory=dict, description="Long-term credential users: name = password.",
        json_schema_extra=LIVE,
    )  # fmt: skip
    rest_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="TURN REST API shared secrets: the first signs new credentials, all are "
        "accepted (add the new one first, drop the old one after credential_ttl_s).",
        json_schema_extra=LIVE,
    )
    rest_secret_grace_s: float = Field(
        86_400.0, ge=0, le=30 * 86_400,
        description="A secret removed by a live reload is still accepted this long.",
        json_schema_extra=LIVE,
    )  # fmt: skip
    credential_ttl_s: int = Field(
        86_400, ge=60, le=30 * 86_400, description="Lifetime of issued REST credentials.",
        json_schema_extra=LIVE,
    )  # fmt: skip
    nonce_lifetime_s: float = Field(
        600.0, ge=10, le=86_400, description="A NONCE older than this gets 438 Stale Nonce.",
        json_schema_extra=LIVE,
    )  # fmt: skip
    peer_allow: list[str] = Field(
        default_factory=list,
        description="CIDR ranges peers may be in even when denied (e.g. the owner's LAN); the "
        "allow-list wins over the deny-list.",
        json_schema_extra=LIVE,
    )
    peer_deny: list[str] = Field(
        default_factory=list,
        description="CIDR ranges refused in addition to the built-in special ranges.",
        json_schema_extra=LIVE,
    )
    allow_loopback_peers: bool = Field(
        False, description="Relay to 127.0.0.0/8 and ::1 (tests and benchmarks only; logged).",
        json_schema_extra=LIVE,
    )  # fmt: skip
    software: str | None = Field(
        "asgard", max_length=127, description="SOFTWARE attribute in responses (none: omit).",
        json_schema_extra=LIVE,
    )  # fmt: skip
    probe_servers: list[str] = Field(
        default_factory=list, description="STUN servers (HOST[:PORT]) probed periodically.",
        json_schema_extra=LIVE,
    )  # fmt: skip
    probe_interval_s: float = Field(
        300.0, ge=5, le=86_400, description="Time between two probe rounds.", json_schema_extra=LIVE
    )
    probe_timeout_s: float = Field(
        3.0, gt=0, le=60, description="Deadline of one probe transaction.", json_schema_extra=LIVE
    )
    relay_thread: bool = Field(
        True,
        description="Relay UDP clients' traffic on a dedicated epoll thread (the control plane stays "
        "in Trio); off: every socket is served by Trio tasks (lower throughput, higher latency).",
    )
    udp_buffer_bytes: int = Field(
        16 << 20, ge=64 << 10, le=256 << 20,
        description="SO_RCVBUF/SO_SNDBUF of the client-facing UDP sockets: headroom for bursts. "
        "Above net.core.rmem_max only with CAP_NET_ADMIN (else capped there).",
    )  # fmt: skip
    relay_buffer_bytes: int = Field(
        2 << 20, ge=64 << 10, le=256 << 20, description="SO_RCVBUF/SO_SNDBUF of each relay socket."
    )
    tcp_max_connections: int = Field(1024, ge=1, le=1_000_000, description="Concurrent TCP clients.")
    tcp_idle_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="A TCP client without an allocation is closed after this."
    )
    tcp_write_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A TCP client that does not read for this long is closed."
    )
    tcp_send_queue_frames: int = Field(
        1024, ge=16, le=1 << 20, description="Frames queued towards one TCP client (drop above)."
    )
    max_stream_frame_bytes: int = Field(
        65_540, ge=1024, le=65_540, description="Largest STUN or ChannelData frame over TCP."
    )

    @field_validator("peer_allow", "peer_deny")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for text in value:
            ipaddress.ip_network(text, strict=False)
        return value

    @field_validator("relay_ipv4", "external_ipv4")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.IPv4Address(value)
        return value

    @field_validator("relay_ipv6", "external_ipv6")
    @classmethod
    def _ipv6(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.IPv6Address(value)
        return value

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        if self.relay_port_min > self.relay_port_max:
            raise ValueError("relay_port_min must not exceed relay_port_max")
        if self.default_lifetime_s > self.max_lifetime_s:
            raise ValueError("default_lifetime_s must not exceed max_lifetime_s")
        return self
