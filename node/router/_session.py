"""A registered device's routing entry: who it is, what it may reach, and its outbox."""

from __future__ import annotations

from collections.abc import Callable

from node.router._outbox import Outbox
from node.router.state import DeliveryState


class Session:
    """One registered device connection as the router sees it.

    Ids are the 16 bytes of their UUIDs, as in frame headers. `networks` are the networks the device
    belongs to (who may reach it); `reach` the networks its token may send to (None: all, for
    service and admin tokens). `close(code, reason)` asks the session's owner to end it (replaced,
    device removed, stuck).
    """

    __slots__ = (
        "__weakref__",
        "capabilities",
        "close",
        "delivery",
        "device_id",
        "device_text",
        "groups",
        "networks",
        "outbox",
        "reach",
        "session_id",
    )

    def __init__(
        self,
        *,
        device_id: bytes,
        device_text: str,
        session_id: str,
        networks: frozenset[bytes],
        reach: frozenset[bytes] | None,
        capabilities: tuple[bytes, ...],
        outbox: Outbox,
        delivery: DeliveryState,
        close: Callable[[int, str], None],
    ) -> None:
        self.device_id = device_id
        self.device_text = device_text
        self.session_id = session_id
        self.networks = networks
        self.reach = reach
        self.capabilities = capabilities
        self.groups: set[bytes] = set()
        self.outbox = outbox
        self.delivery = delivery
        self.close = close

    def may_reach(self, networks: frozenset[bytes]) -> bool:
        """True when this session's token may send to a device in one of `networks`."""
        reach = self.reach
        return reach is None or not reach.isdisjoint(networks)

    @property
    def outstanding(self) -> int:
        """Frames queued for the writer plus durable frames not yet confirmed (least-outstanding)."""
        return len(self.outbox.frames) + self.delivery.outstanding

    def __repr__(self) -> str:
        return f"<Session {self.device_text} {self.session_id}>"
