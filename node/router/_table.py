"""The routing table: device id -> local session, plus the indexes broadcast, multicast and anycast use.

All keys are 16-byte ids as they appear in frame headers, so the hot path does one dict lookup on
the received header field and never converts an id to text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.router._session import Session


@dataclass(slots=True)
class Group:
    """A multicast group: its network and its persisted members (device id bytes -> text)."""

    network_id: bytes
    name: str
    members: dict[bytes, str] = field(default_factory=dict)


class RoutingTable:
    """Local sessions and group memberships (the mirror of the persisted ones)."""

    def __init__(self) -> None:
        self.sessions: dict[bytes, Session] = {}
        self.by_text: dict[str, Session] = {}
        self.by_network: dict[bytes, dict[Session, None]] = {}  # ordered sets
        self.by_capability: dict[bytes, list[Session]] = {}
        self.groups: dict[bytes, Group] = {}
        self.rr_next: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def add(self, session: Session) -> Session | None:
        """Make `session` the route of its device; return the session it replaced, if any."""
        old = self.sessions.get(session.device_id)
        if old is not None:
            self.remove(old)
        self.sessions[session.device_id] = session
        self.by_text[session.device_text] = session
        for network in session.networks:
            self.by_network.setdefault(network, {})[session] = None
        for cap in session.capabilities:
            self.by_capability.setdefault(cap, []).append(session)
        return old

    def remove(self, session: Session) -> bool:
        """Remove `session` if it is still its device's route; False when it was not."""
        if self.sessions.get(session.device_id) is not session:
            return False
        del self.sessions[session.device_id]
        del self.by_text[session.device_text]
        for network in session.networks:
            members = self.by_network.get(network)
            if members is not None:
                members.pop(session, None)
                if not members:
                    del self.by_network[network]
        for cap in session.capabilities:
            candidates = self.by_capability.get(cap)
            if candidates is not None:
                candidates.remove(session)
                if not candidates:
                    del self.by_capability[cap]
                    self.rr_next.pop(cap, None)
        return True

    def join(self, group_id: bytes, network_id: bytes, name: str, device_id: bytes, device_text: str) -> None:
        """Record a membership (already persisted)."""
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(network_id, name)
        group.members[device_id] = device_text
        session = self.sessions.get(device_id)
        if session is not None:
            session.groups.add(group_id)

    def leave(self, group_id: bytes, device_id: bytes) -> bool:
        """Forget a membership; False when there was none."""
        group = self.groups.get(group_id)
        if group is None or group.members.pop(device_id, None) is None:
            return False
        if not group.members:
            del self.groups[group_id]
        session = self.sessions.get(device_id)
        if session is not None:
            session.groups.discard(group_id)
        return True

    def forget_device(self, device_id: bytes) -> None:
        """Drop every membership of a device (it was unregistered)."""
        for group_id in [g for g, group in self.groups.items() if device_id in group.members]:
            self.leave(group_id, device_id)

    def groups_of(self, device_id: bytes) -> set[bytes]:
        """The groups a device is a member of."""
        return {g for g, group in self.groups.items() if device_id in group.members}
