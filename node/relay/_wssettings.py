"""Settings of the WebSocket engine (`[relay.websocket]` in the node's TOML, embedded by the relay)."""

from __future__ import annotations

from pydantic import Field

from node._section import LIVE, Section  # not `node.config`: it imports this module


class WsSettings(Section):
    """Limits and timers of the WebSocket data path.

    Fields marked live (`json_schema_extra=LIVE`) are read at each use and may change while the
    node runs (`WsEngine.apply_settings`); `max_message_bytes` then applies to new connections.
    The others take effect when the listener restarts.
    """

    max_message_bytes: int = Field(
        default=1 << 20,
        ge=64,
        le=1 << 28,
        description="Largest message accepted (after reassembly); bigger ones close with 1009.",
        json_schema_extra=LIVE,
    )
    max_handshake_bytes: int = Field(
        default=8192,
        ge=512,
        le=65536,
        description="Largest HTTP upgrade request header block; bigger ones get 431.",
    )
    handshake_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Deadline for reading the whole upgrade request.",
        json_schema_extra=LIVE,
    )
    ping_interval_s: float = Field(
        default=20.0,
        gt=0,
        description="Silence after which the node sends a ping (any received byte counts as life).",
        json_schema_extra=LIVE,
    )
    pong_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="Further silence after the ping before the connection closes with 1011.",
        json_schema_extra=LIVE,
    )
    close_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Deadline for the close handshake before the TCP close.",
        json_schema_extra=LIVE,
    )
    write_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A write blocked longer than this (a stuck consumer) aborts the connection.",
        json_schema_extra=LIVE,
    )
    receive_buffer_bytes: int = Field(
        default=256 * 1024,
        ge=4096,
        le=16 * 1024 * 1024,
        description="Size of the one read buffer shared by all connections of a listener.",
    )
    backlog: int = Field(default=1024, ge=1, le=65535, description="TCP listen backlog.")
