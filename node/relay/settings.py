"""Settings of the WebSocket relay (the `[relay]` section, with `[relay.queue]` and `[relay.websocket]`).

Fields marked live (`json_schema_extra=LIVE`) are applied by `RelayService.apply_settings` while
the node runs: the Origin allow-list, the HELLO timeout, the message rate, outbox and in-flight
limits (for sessions opened afterwards), the anycast default and everything in `[relay.queue]`,
plus the engine's live fields (`[relay.websocket]`). The others (address, port, path, payload
limit, buffer sizes) take effect at the next start.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, model_validator

from node._section import LIVE, Section
from node.relay._wssettings import WsSettings
from wire.device import HEADER_BYTES


class QueueSettings(Section):
    """The offline queue of DURABLE messages (per receiving device)."""

    max_messages: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="Most messages queued for one device.",
        json_schema_extra=LIVE,
    )
    max_bytes: int = Field(
        64 << 20,
        ge=0,
        le=1 << 40,
        description="Most bytes (whole frames) queued for one device.",
        json_schema_extra=LIVE,
    )
    ttl_s: float = Field(
        7 * 86_400.0,
        gt=0,
        le=365 * 86_400.0,
        description="A queued message older than this is purged and never delivered.",
        json_schema_extra=LIVE,
    )
    overflow: Literal["refuse-new", "drop-oldest"] = Field(
        "refuse-new",
        description="When a device's queue is full: refuse the new message (NACK queue-full), or drop "
        "the oldest ones (NACK dropped to their senders when connected).",
        json_schema_extra=LIVE,
    )
    purge_interval_s: float = Field(
        30.0, gt=0, le=86_400, description="How often expired messages are purged.", json_schema_extra=LIVE
    )
    purge_batch: int = Field(
        5000,
        ge=1,
        le=1_000_000,
        description="Most expired messages purged in one commit.",
        json_schema_extra=LIVE,
    )


class RelaySettings(Section):
    """The device relay: WebSocket sessions, routing, offline queue."""

    enabled: bool = Field(True, description="Run the WebSocket relay.")
    host: str | None = Field(None, description="Listen address; default: server.host.")
    port: int = Field(7701, ge=0, le=65535, description="TCP port (0 = any free port).")
    path: str = Field(
        "/v1/ws", pattern=r"^/[\x21-\x7e]*$", description="Request path of the WebSocket endpoint."
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to connect (exact match, e.g. 'https://home.example'); a "
        "request with another Origin header gets 403. Requests without Origin (devices) are not "
        "affected. '*' allows every origin.",
        json_schema_extra=LIVE,
    )
    hello_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Deadline for HELLO after the upgrade when no Authorization header was sent (4001).",
        json_schema_extra=LIVE,
    )
    max_payload_bytes: int = Field(
        1 << 20,
        ge=0,
        le=(1 << 28) - HEADER_BYTES,
        description="Largest data payload (NACK too-large above; a WebSocket message over "
        "websocket.max_message_bytes closes with 1009). Announced in WELCOME.",
    )
    rate_per_s: float = Field(
        100_000.0,
        gt=0,
        description="Sustained messages per second per connection; a connection over it (past the "
        "burst) is closed with 1008.",
        json_schema_extra=LIVE,
    )
    burst: int = Field(
        200_000,
        ge=1,
        description="Messages a connection may send at once above its rate.",
        json_schema_extra=LIVE,
    )
    outbox_max_messages: int = Field(
        4096,
        ge=1,
        le=1_000_000,
        description="Most frames waiting to be written to one session; more best-effort frames are "
        "dropped (NACK resource-exhausted), DURABLE ones wait in the offline queue.",
        json_schema_extra=LIVE,
    )
    outbox_max_bytes: int = Field(
        4 << 20,
        ge=1024,
        le=1 << 30,
        description="Most bytes waiting for one session.",
        json_schema_extra=LIVE,
    )
    max_inflight: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Most DURABLE frames pushed to one session without DELIVERED; then it gets more "
        "only as confirmations come back.",
        json_schema_extra=LIVE,
    )
    anycast_default: Literal["round-robin", "least-outstanding"] = Field(
        "round-robin",
        description="Anycast policy for frames that leave it to the node (flags bits 8-9 = 0).",
        json_schema_extra=LIVE,
    )
    heartbeat_write_interval_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="Traffic refreshes the registry's last_seen and the connection record at most "
        "this often per session.",
        json_schema_extra=LIVE,
    )
    max_subscriptions: int = Field(
        10_000,
        ge=0,
        le=1_000_000,
        description="Most devices plus networks one session may watch.",
        json_schema_extra=LIVE,
    )
    queue: QueueSettings = Field(default_factory=QueueSettings)
    websocket: WsSettings = Field(default_factory=WsSettings)

    @model_validator(mode="before")
    @classmethod
    def _message_limit_follows_payload(cls, data: Any) -> Any:
        """Unless set explicitly, the WebSocket message limit is one frame: header + payload limit."""
        if isinstance(data, dict):
            payload = data.get("max_payload_bytes", cls.model_fields["max_payload_bytes"].default)
            ws = data.get("websocket")
            if ws is None or (isinstance(ws, dict) and "max_message_bytes" not in ws):
                data = {**data, "websocket": {**(ws or {}), "max_message_bytes": payload + HEADER_BYTES}}
        return data

    @model_validator(mode="after")
    def _frame_fits_message(self) -> Self:
        if self.websocket.max_message_bytes < HEADER_BYTES + self.max_payload_bytes:
            raise ValueError("websocket.max_message_bytes must be at least max_payload_bytes + 48")
        return self
