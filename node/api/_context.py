"""What the REST handlers need from the node, gathered in one object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.clock import WallClock
from node.config import Settings
from node.locks import LockService
from node.logs import Logs
from node.ratelimit import RateLimiter
from node.registry import Registry
from node.storage import Storage
from node.tokens import AuditLog, TokenService
from node.turn import TurnService
from node.turn.store_users import StoreUsers


@dataclass
class ApiContext:
    """Shared by every request; `settings` is replaced on hot reload."""

    settings: Settings
    node_id: str
    clock: WallClock
    storage: Storage
    registry: Registry
    tokens: TokenService
    audit: AuditLog
    logs: Logs
    started_at: float
    stats_providers: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    state: str = "starting"  # starting | ok | stopping
    locks: LockService | None = None
    turn: TurnService | None = None
    turn_users: StoreUsers | None = None

    def __post_init__(self) -> None:
        api = self.settings.api
        self.token_limiter = RateLimiter(api.rate_per_token, api.burst_per_token)
        self.ip_limiter = RateLimiter(api.rate_per_ip, api.burst_per_ip)

    def apply(self, settings: Settings) -> None:
        """Apply live-changeable API settings (rate limits, CORS origins)."""
        self.settings = settings
        self.token_limiter.reshape(settings.api.rate_per_token, settings.api.burst_per_token)
        self.ip_limiter.reshape(settings.api.rate_per_ip, settings.api.burst_per_ip)
