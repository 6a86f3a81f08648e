"""The settings schema of the node's own sections; each service may own its section model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from node._section import LIVE, Section


class ServerSettings(Section):
    """Process-wide settings."""

    host: str = Field(
        "0.0.0.0",  # noqa: S104 - devices on the LAN must reach the node; every endpoint needs a token
        description="Default listen address of every service (a service section may override it).",
    )
    node_name: str = Field("asgard", max_length=64, description="Human-readable node name.")
    data_dir: Path = Field(Path("./var"), description="Directory for the store, logs and state.")
    shutdown_grace_s: float = Field(
        5.0, gt=0, le=120, description="Deadline for draining connections on SIGINT/SIGTERM."
    )
    config_poll_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often the config file is checked for changes."
    )


class StoreSettings(Section):
    """SQLite store."""

    path: Path | None = Field(None, description="Database file; default: <server.data_dir>/asgard.db.")
    busy_timeout_ms: int = Field(5000, ge=0, le=600_000, description="SQLite busy timeout.")
    writer_batch_max: int = Field(
        512, ge=1, le=100_000, description="Most writes committed in one group commit."
    )
    writer_queue_max: int = Field(
        20_000, ge=1, le=1_000_000, description="Most writes waiting for the writer thread."
    )
    checkpoint_interval_s: float = Field(
        2.0, gt=0, le=3600, description="How often the WAL is checkpointed in the background."
    )


class ApiSettings(Section):
    """REST API and dashboard (quart-trio on hypercorn)."""

    host: str | None = Field(None, description="Listen address; default: server.host.")
    port: int = Field(7700, ge=0, le=65535, description="TCP port (0 = any free port).")
    max_body_bytes: int = Field(
        1 << 20, ge=1024, le=64 << 20, description="Largest request body (413 above)."
    )
    page_size_default: int = Field(50, ge=1, le=10_000, description="Default list page size.")
    page_size_max: int = Field(500, ge=1, le=10_000, description="Largest list page size.")

    @field_validator("page_size_max")
    @classmethod
    def _max_not_below_default(cls, value: int, info: Any) -> int:
        default = info.data.get("page_size_default")
        if default is not None and value < default:
            raise ValueError("must be at least page_size_default")
        return value

    rate_per_token: float = Field(
        200.0, gt=0, description="Sustained requests per second per token.", json_schema_extra=LIVE
    )
    burst_per_token: int = Field(400, ge=1, description="Burst size per token.", json_schema_extra=LIVE)
    rate_per_ip: float = Field(
        400.0,
        gt=0,
        description="Sustained requests per second per client IP.",
        json_schema_extra=LIVE,
    )
    burst_per_ip: int = Field(800, ge=1, description="Burst size per client IP.", json_schema_extra=LIVE)
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (exact match; empty = none).",
        json_schema_extra=LIVE,
    )
    public_docs: bool = Field(
        True, description="Serve /openapi.json and /docs without a token (they hold no data)."
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, le=600, description="Idle keep-alive connection timeout.")


class RegistrySettings(Section):
    """Device, network and connection registry, and heartbeat-driven status tracking."""

    heartbeat_interval_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="Expected heartbeat interval of a device.",
        json_schema_extra=LIVE,
    )
    inactive_after_missed: int = Field(
        3,
        ge=1,
        le=10_000,
        description="Missed heartbeats before a device is 'inactive'.",
        json_schema_extra=LIVE,
    )
    offline_after_missed: int = Field(
        10,
        ge=1,
        le=100_000,
        description="Missed heartbeats before a device is 'offline'.",
        json_schema_extra=LIVE,
    )

    world_types: list[str] = Field(
        default_factory=lambda: ["physical", "virtual", "simulated"],
        min_length=1,
        description="Accepted values of a device's world_type.",
    )
    max_capabilities: int = Field(64, ge=0, le=4096, description="Most capabilities per device.")
    max_capability_chars: int = Field(64, ge=1, le=1024, description="Longest capability name.")
    max_hardware_spec_bytes: int = Field(
        8192, ge=2, le=1 << 20, description="Largest hardware_spec, as compact JSON."
    )
    last_seen_flush_interval_s: float = Field(
        5.0, gt=0, le=3600, description="How often in-memory last_seen times are written out."
    )

    @field_validator("offline_after_missed")
    @classmethod
    def _offline_after_inactive(cls, value: int, info: Any) -> int:
        inactive = info.data.get("inactive_after_missed")
        if inactive is not None and value <= inactive:
            raise ValueError("must be greater than inactive_after_missed")
        return value


class LoggingSettings(Section):
    """Structured logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level.", json_schema_extra=LIVE
    )
    console: bool = Field(True, description="Readable log lines on stderr.")
    file: Path | None = Field(
        None, description="JSON-lines log file (rotated); default: none. Relative to data_dir."
    )
    file_max_bytes: int = Field(10 << 20, ge=4096, description="Rotate the log file at this size.")
    file_backups: int = Field(5, ge=0, le=1000, description="Rotated log files kept.")
    ring_size: int = Field(
        2000, ge=10, le=1_000_000, description="Records kept in memory for /api/v1/admin/logs."
    )
