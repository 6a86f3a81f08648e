"""Settings of the gRPC router (`[rpc]`) and of the neighbour-service clients (`[rpc.odin]`, ...).

Fields marked live (`json_schema_extra={"live": True}`) may change while the node runs and are
applied by `RpcServer.apply_settings`: max_message_bytes, max_in_flight, default_call_timeout_s,
shutdown_grace_s, auth_cache_ttl_s, auth_cache_max_entries, public_health. Everything else (address,
TLS, stream window, reflection, neighbours) needs a restart of the service.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict

LIVE: JsonDict = {"live": True}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NeighbourSettings(_Section):
    """How to reach one neighbour service (Odin, Bifrost); unset `address` = not configured."""

    address: str | None = Field(
        None, description="host:port of the service; empty means not configured (calls fail clearly)."
    )
    tls: bool = Field(False, description="Connect with TLS.")
    tls_ca_path: Path | None = Field(
        None, description="PEM file of CA certificates to trust; default: the system store."
    )
    token: str | None = Field(
        None, description="Bearer token sent as `authorization` metadata; default: none."
    )
    timeout_s: float = Field(
        5.0, gt=0, le=600, description="Deadline of a unary call, and of opening a stream."
    )
    stream_timeout_s: float = Field(
        120.0, gt=0, le=86_400, description="Deadline of a whole response stream (Odin answers)."
    )

    def host_port(self) -> tuple[str, int]:
        """`address` split into host and port."""
        if not self.address:
            raise ValueError("not configured")
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)

    @model_validator(mode="after")
    def _address_has_port(self) -> NeighbourSettings:
        if self.address:
            host, sep, port = self.address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("address must be host:port")
        return self


class HeimdallSettings(NeighbourSettings):
    """Heimdall, the optional external token and device-identity check."""

    timeout_s: float = Field(
        2.0, gt=0, le=60, description="Deadline of one validation; past it the token is denied."
    )
    cache_ttl_s: float = Field(
        30.0, ge=0, le=3600, description="How long a positive answer is reused (0 = never)."
    )
    negative_cache_ttl_s: float = Field(
        5.0, ge=0, le=3600, description="How long an 'invalid token' answer is reused (0 = never)."
    )
    cache_max_entries: int = Field(10_000, ge=1, le=1_000_000, description="Tokens cached at most.")


class RpcSettings(_Section):
    """The gRPC router: grpclib on its own uvloop thread, bridged to Trio."""

    host: str | None = Field(None, description="Listen address; default: server.host.")
    port: int = Field(7702, ge=0, le=65535, description="TCP port (0 = any free port).")
    max_message_bytes: int = Field(
        4 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest request message; larger ones are answered RESOURCE_EXHAUSTED.",
        json_schema_extra=LIVE,
    )
    tls_cert_path: Path | None = Field(
        None, description="PEM certificate chain; with tls_key_path enables TLS (HTTP/2 over TLS)."
    )
    tls_key_path: Path | None = Field(None, description="PEM private key of tls_cert_path.")
    tls_client_ca_path: Path | None = Field(
        None, description="PEM CA file: when set, clients must present a certificate it signed."
    )
    max_in_flight: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Calls and streams handed to the node at once; more get RESOURCE_EXHAUSTED.",
        json_schema_extra=LIVE,
    )
    max_connections: int = Field(
        1024,
        ge=1,
        le=100_000,
        description="Client connections held at once; one more is closed as soon as it is accepted.",
        json_schema_extra=LIVE,
    )
    handshake_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="A client connection must have sent the HTTP/2 preface and its SETTINGS within "
        "this time of being accepted (after TLS), or it is closed.",
        json_schema_extra=LIVE,
    )
    stream_window: int = Field(
        64, ge=2, le=65_536, description="Messages in flight per stream direction (flow control)."
    )
    default_call_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Deadline of a unary call whose client set none.",
        json_schema_extra=LIVE,
    )
    shutdown_grace_s: float = Field(
        5.0,
        ge=0,
        le=120,
        description="On shutdown, how long in-flight unary calls may run on (within their deadline).",
        json_schema_extra=LIVE,
    )
    auth_timeout_s: float = Field(5.0, gt=0, le=60, description="Deadline of one token check.")
    auth_cache_ttl_s: float = Field(
        2.0,
        ge=0,
        le=300,
        description="How long a validated token is reused on the gRPC thread (0 = check every call);"
        " a revoked token keeps working at most this long.",
        json_schema_extra=LIVE,
    )
    auth_cache_max_entries: int = Field(
        10_000, ge=1, le=1_000_000, description="Tokens cached at most.", json_schema_extra=LIVE
    )
    public_health: bool = Field(
        True,
        description="Serve grpc.health.v1 without a token (probes and load balancers).",
        json_schema_extra=LIVE,
    )
    reflection: bool = Field(
        True, description="Serve gRPC server reflection (v1 and v1alpha) to authenticated callers."
    )
    stop_timeout_s: float = Field(
        5.0, gt=0, le=120, description="How long to wait for the gRPC thread to stop."
    )
    odin: NeighbourSettings = Field(
        default_factory=NeighbourSettings, description="Odin, the assistant process."
    )
    heimdall: HeimdallSettings = Field(
        default_factory=HeimdallSettings, description="Heimdall, the external security service."
    )
    bifrost: NeighbourSettings = Field(
        default_factory=NeighbourSettings, description="Bifrost, relays on other hosts."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> RpcSettings:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path must be set together")
        if self.tls_client_ca_path is not None and self.tls_cert_path is None:
            raise ValueError("tls_client_ca_path needs tls_cert_path and tls_key_path")
        return self
