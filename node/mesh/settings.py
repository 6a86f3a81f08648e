"""Settings of the mesh of nodes: the `[mesh]` section, with `[mesh.discovery]`, `[mesh.link]`,
`[mesh.sync]` and `[mesh.election]`.

Fields marked live (`json_schema_extra=LIVE`) are applied by `Mesh.apply_settings` while the node
runs: the static peer list, the allowed node ids, the hop limit, every `[mesh.link]` timer and
backoff, and every `[mesh.sync]` interval and the tombstone lifetime. Everything else (whether the
mesh runs, the listener's address and limits, the cluster id and secret, the advertised address,
discovery, TLS and etcd) takes effect at the next start.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from node._section import LIVE, Section

_CLUSTER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_SECRET_CHARS = 16


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`, port 1-65535) as (host, port); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port 1-65535, got {address!r}")
    return host, int(port)


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class DiscoverySettings(Section):
    """mDNS (zeroconf) announcement and browsing of `_asgard._tcp.local.`."""

    mdns: bool = Field(
        False,
        description="Announce this node and browse for others over mDNS. Off by default: a node "
        "never multicasts unless asked to, and then only on `interfaces`.",
    )
    interfaces: tuple[str, ...] = Field(
        ("127.0.0.1",),
        min_length=1,
        description="Addresses of the interfaces mDNS uses (never every interface implicitly); "
        "the first one is announced as this node's address unless mesh.advertise_address is set.",
    )
    resolve_timeout_s: float = Field(
        3.0, gt=0, le=60, description="Deadline for resolving one discovered service."
    )

    @field_validator("interfaces")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_address(item)  # ValueError names the bad one
        return value


class LinkSettings(Section):
    """Peer links: handshake, keepalive, reconnect backoff, queue and message bounds, TLS for dialing."""

    handshake_timeout_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description="Deadline of a dial (TCP, TLS), of an accepted connection's TLS handshake, "
        "HTTP/2 preface and request, and of the challenge-response after a link opens.",
    )
    ping_interval_s: float = Field(
        1.0, gt=0, le=600, description="A link is pinged this often (RTT, health).", json_schema_extra=LIVE
    )
    dead_after_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="A link from which nothing arrived for this long is closed (and redialled).",
        json_schema_extra=LIVE,
    )
    backoff_initial_s: float = Field(
        0.2, gt=0, le=600, description="First reconnect delay.", json_schema_extra=LIVE
    )
    backoff_max_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Longest reconnect delay (the delay doubles, with jitter).",
        json_schema_extra=LIVE,
    )
    send_window: int = Field(
        256,
        ge=2,
        le=65_536,
        description="Messages per link and direction handed over and not yet taken: queued for the "
        "connection and not yet encoded, or received and not yet consumed by the node.",
    )
    queue_max_messages: int = Field(
        8192,
        ge=1,
        le=10_000_000,
        description="Messages waiting behind the window per link; past it frames for that peer are "
        "refused (NACK unavailable) instead of queued without bound.",
    )
    max_message_bytes: int = Field(
        4 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest link message accepted from a peer (either direction); a larger one ends "
        "the link.",
    )
    tls: bool = Field(
        False, description="Dial peers with TLS (their mesh listener must have TLS: [rpc] certificate)."
    )
    tls_ca_path: Path | None = Field(
        None, description="PEM CA certificates trusted for peers; default: the system store."
    )
    tls_server_name: str | None = Field(
        None, description="Name checked in the peers' certificates; default: the dialled host."
    )


class SyncSettings(Section):
    """Registry replication: stamping local changes, anti-entropy, tombstones, queue handoff."""

    poll_interval_s: float = Field(
        0.25,
        gt=0,
        le=60,
        description="Local registry changes are picked up at least this often.",
        json_schema_extra=LIVE,
    )
    anti_entropy_interval_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="Besides when a link opens, digests are compared this often.",
        json_schema_extra=LIVE,
    )
    tombstone_ttl_s: float = Field(
        7 * 86_400.0,
        gt=0,
        le=3650 * 86_400.0,
        description="Deletions are remembered this long; a node partitioned for longer may bring "
        "a deleted record back.",
        json_schema_extra=LIVE,
    )
    batch_max_records: int = Field(
        256, ge=1, le=100_000, description="Most records in one replication message."
    )
    handoff_batch: int = Field(
        128, ge=1, le=100_000, description="Most queued frames handed to a device's home node at once."
    )
    max_clock_drift_s: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="A peer's clock this far ahead does not drag this node's hybrid clock with it.",
    )


class ElectionSettings(Section):
    """Leader election on etcd (the oldest live campaigner leads)."""

    etcd_endpoints: tuple[str, ...] = Field(
        (),
        description="etcd v3 JSON gateway URLs (http://host:2379). Empty: no election, every node "
        "is its own leader.",
    )
    key_prefix: str = Field(
        "/asgard/mesh/", min_length=1, description="Election keys live under <prefix><cluster_id>/leader/."
    )
    lease_ttl_s: int = Field(
        5, ge=2, le=3600, description="TTL of the campaign lease: a dead leader is replaced within it."
    )
    request_timeout_s: float = Field(2.0, gt=0, le=60, description="Deadline of one etcd request.")
    connect_timeout_s: float = Field(1.0, gt=0, le=60, description="Deadline of one TCP connect to etcd.")
    retry_s: float = Field(1.0, gt=0, le=600, description="Delay before campaigning again after a failure.")
    housekeeping_interval_s: float = Field(
        10.0,
        gt=0,
        le=86_400,
        description="How often the leader sends its housekeeping order (tombstone horizon).",
        json_schema_extra=LIVE,
    )

    @field_validator("etcd_endpoints")
    @classmethod
    def _http(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith("http://"):
                raise ValueError(f"etcd endpoint must be an http:// URL: {url!r}")
        return value


class MeshSettings(Section):
    """The mesh of nodes: discovery, authenticated peer links, registry sync, cross-node routing.

    Live fields (applied by `Mesh.apply_settings`): peers, allowed_nodes, hop_limit, the link
    timers and backoff, the sync intervals and tombstone lifetime. The rest needs a restart.
    """

    enabled: bool = Field(False, description="Run the mesh (needs cluster_secret).")
    host: str | None = Field(None, description="Listen address of the mesh listener; default: server.host.")
    port: int = Field(
        7703, ge=0, le=65535, description="TCP port of the mesh listener (peer links; 0 = any free port)."
    )
    max_connections: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Connections the mesh listener holds at once (links and handshakes); more are "
        "closed at once.",
    )
    cluster_id: str = Field(
        "asgard", description="Name of the cluster; nodes of another cluster are refused."
    )
    cluster_secret: SecretStr | None = Field(
        None,
        description=f"Shared secret (at least {MIN_SECRET_CHARS} characters) every node of the cluster "
        "proves it knows; never sent over the wire.",
    )
    allowed_nodes: tuple[str, ...] = Field(
        (),
        description="Node ids allowed to link; empty: any node that proves the cluster secret.",
        json_schema_extra=LIVE,
    )
    peers: tuple[str, ...] = Field(
        (),
        description="Static peers to dial: host:port of their mesh listener ([mesh] port, 7703 by "
        "default). Works without multicast.",
        json_schema_extra=LIVE,
    )
    advertise_address: str | None = Field(
        None,
        description="host:port other nodes use to reach this node's mesh listener (told in the "
        "handshake and over mDNS); default: the bound mesh address (over mDNS: the first discovery "
        "interface with the mesh port).",
    )
    hop_limit: int = Field(
        4, ge=1, le=32, description="Most node-to-node hops a frame may take.", json_schema_extra=LIVE
    )
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)
    link: LinkSettings = Field(default_factory=LinkSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    election: ElectionSettings = Field(default_factory=ElectionSettings)

    @field_validator("cluster_id")
    @classmethod
    def _cluster_id(cls, value: str) -> str:
        if not _CLUSTER_ID.match(value):
            raise ValueError("cluster_id: 1-64 characters of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            try:
                split_address(address)
            except ValueError as exc:
                raise ValueError(f"{exc} (a peer's mesh listener)") from None
        return value

    @field_validator("advertise_address")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, _ = split_address(value)
        if _unspecified(host):
            raise ValueError(f"{host} is not an address peers can dial; name this node's own address")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() or c in "[]/" for c in value)):
            raise ValueError(f"expected an IP address or host name, got {value!r}")
        return value

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> Self:
        secret = self.cluster_secret.get_secret_value() if self.cluster_secret else ""
        if self.enabled and len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"mesh.enabled needs a cluster_secret of at least {MIN_SECRET_CHARS} characters")
        if self.link.backoff_max_s < self.link.backoff_initial_s:
            raise ValueError("mesh.link.backoff_max_s must be >= backoff_initial_s")
        return self
