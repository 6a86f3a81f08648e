"""Pure TURN state (RFC 8656): allocations, permissions, channels, reservations, quotas, timers.

Theory of operation
-------------------
An allocation belongs to one client 5-tuple, written `(tag, client address)`: the tag stands for
the server side and transport (a UDP listener or one TCP connection). It owns one relay per
address family (two for a dual allocation, RFC 8656 §7.2), a lifetime, permissions (peer IP ->
expiry, 300 s, §9) and channel bindings (number <-> peer transport address, 600 s, §12).

The relay hot paths read two dicts and nothing else, so this module keeps them exact:
  * `routes[tag][(client address, channel)] -> ChannelBinding` (client -> peer), and
  * `allocation.channel_by_peer[(peer host, peer port)] -> channel` (peer -> client)
hold a binding only while the binding is alive AND its peer IP has a live permission; installing
or refreshing a permission re-enables the bindings to that IP, expiry of either disables them.
`allocation.permissions` is read by the peer -> client path for Data indications.

Timers are a heap of (deadline, seq, kind, ref). Refreshing only moves an object's expiry later,
so no entry is pushed then: when an entry pops early the object is re-pushed at its own expiry.
An allocation whose lifetime shrinks (Refresh) pushes one earlier entry. `next_deadline()` tells
the service when to call `expire(now)`. After a channel expires, for 300 s its number may not be
bound to another peer nor its peer to another number (§12).

Quotas: allocations per user (486) and in total (508), permissions and channels per allocation
(508). Every function takes `now` (service clock, seconds); nothing here does I/O.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

PERMISSION_LIFETIME_S = 300.0  # RFC 8656 §9
CHANNEL_LIFETIME_S = 600.0  # RFC 8656 §12
CHANNEL_QUARANTINE_S = 300.0  # RFC 8656 §12
RESERVATION_LIFETIME_S = 30.0  # RFC 8656 §7.2 (EVEN-PORT R bit): "about 30 seconds"

PeerAddress = tuple[str, int]
ClientAddress = tuple[Any, ...]


@dataclass(eq=False, slots=True)
class Relay:
    """A relayed transport address; `sock` is the service's socket (anything with `sendto`)."""

    family: int
    address: PeerAddress
    sock: Any


class TokenBucket:
    """Bytes-per-second cap with a one-second burst. It keeps its own clock origin (the first
    `take`), so the relay thread may drive it with `time.monotonic()`."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._burst = max(rate, 65_536.0)
        self._tokens = self._burst
        self._stamp: float | None = None

    def take(self, amount: int, now: float) -> bool:
        """Spend `amount` bytes if the bucket holds them."""
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True


@dataclass(eq=False, slots=True)
class ChannelBinding:
    """One channel: number, peer transport address and the relay that reaches it."""

    number: int
    peer: PeerAddress
    relay: Relay
    allocation: Allocation
    expiry: float
    send: Callable[..., Any]


@dataclass(eq=False, slots=True)
class Allocation:
    """One client's allocation."""

    tag: Hashable
    client_addr: ClientAddress
    username: str
    user: str
    key: bytes
    integrity: str
    relays: dict[int, Relay]
    expiry: float
    transaction_id: bytes
    dont_fragment: bool = False
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, ChannelBinding] = field(default_factory=dict)
    channel_by_peer: dict[PeerAddress, int] = field(default_factory=dict)
    quarantine: dict[int, tuple[PeerAddress, float]] = field(default_factory=dict)
    bucket: TokenBucket | None = None
    to_peer_bytes: int = 0
    to_peer_datagrams: int = 0
    to_client_bytes: int = 0
    to_client_datagrams: int = 0
    scheduled: float = float("inf")
    alive: bool = True


@dataclass
class Limits:
    """Quotas (live-changeable)."""

    per_user: int = 16
    total: int = 1024
    permissions: int = 128
    channels: int = 128
    bandwidth_bytes_per_s: int | None = None


@dataclass
class Expired:
    """What `expire` removed: allocations (their relays must be closed) and stray relays."""

    allocations: list[Allocation] = field(default_factory=list)
    relays: list[Relay] = field(default_factory=list)


class TurnState:
    """The tables of a TURN server. See the module docstring for the invariants."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.allocations: dict[tuple[Hashable, ClientAddress], Allocation] = {}
        self.routes: dict[Hashable, dict[tuple[ClientAddress, int], ChannelBinding]] = {}
        self.per_user: Counter[str] = Counter()
        self.reservations: dict[bytes, tuple[Relay, float]] = {}
        self.retired = Counter[str]()
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()

    # -- lookups and quotas ---------------------------------------------------------------------

    def allocation(self, tag: Hashable, client_addr: ClientAddress) -> Allocation | None:
        """The allocation of a client 5-tuple."""
        return self.allocations.get((tag, client_addr))

    def routes_for(self, tag: Hashable) -> dict[tuple[ClientAddress, int], ChannelBinding]:
        """The (client address, channel) -> binding dict of one listener or connection."""
        routes = self.routes.get(tag)
        if routes is None:
            routes = self.routes[tag] = {}
        return routes

    def quota_error(self, user: str) -> int | None:
        """486 when `user` holds its quota, 508 when the node is full, else None."""
        if self.per_user[user] >= self.limits.per_user:
            return 486
        if len(self.allocations) >= self.limits.total:
            return 508
        return None

    def set_bandwidth(self, bytes_per_s: int | None) -> None:
        """Apply a new per-allocation cap to every allocation (and new ones)."""
        self.limits.bandwidth_bytes_per_s = bytes_per_s
        for allocation in self.allocations.values():
            allocation.bucket = None if bytes_per_s is None else TokenBucket(bytes_per_s)

    # -- allocations ----------------------------------------------------------------------------

    def add_allocation(self, allocation: Allocation, now: float) -> None:
        """Register a new allocation (quotas were checked by the caller)."""
        if self.limits.bandwidth_bytes_per_s is not None:
            allocation.bucket = TokenBucket(self.limits.bandwidth_bytes_per_s)
        self.allocations[(allocation.tag, allocation.client_addr)] = allocation
        self.per_user[allocation.user] += 1
        self._schedule_allocation(allocation, allocation.expiry)

    def refresh(self, allocation: Allocation, lifetime_s: float, now: float) -> None:
        """Set a new time-to-expiry (RFC 8656 §8)."""
        allocation.expiry = now + lifetime_s
        self._schedule_allocation(allocation, allocation.expiry)

    def remove_allocation(self, allocation: Allocation) -> None:
        """Delete an allocation with its permissions and channels."""
        if not allocation.alive:
            return
        allocation.alive = False
        del self.allocations[(allocation.tag, allocation.client_addr)]
        self.per_user[allocation.user] -= 1
        if self.per_user[allocation.user] <= 0:
            del self.per_user[allocation.user]
        routes = self.routes.get(allocation.tag, {})
        for number in allocation.channels:
            routes.pop((allocation.client_addr, number), None)
        allocation.channel_by_peer.clear()
        allocation.permissions.clear()
        self.retired.update(
            to_peer_bytes=allocation.to_peer_bytes,
            to_peer_datagrams=allocation.to_peer_datagrams,
            to_client_bytes=allocation.to_client_bytes,
            to_client_datagrams=allocation.to_client_datagrams,
        )

    def remove_tag(self, tag: Hashable) -> list[Allocation]:
        """Delete every allocation of a listener or connection (a TCP client went away)."""
        gone = [a for (t, _), a in list(self.allocations.items()) if t == tag]
        for allocation in gone:
            self.remove_allocation(allocation)
        self.routes.pop(tag, None)
        return gone

    def _schedule_allocation(self, allocation: Allocation, deadline: float) -> None:
        if deadline < allocation.scheduled:
            allocation.scheduled = deadline
            self._push(deadline, "allocation", allocation)

    # -- permissions and channels ---------------------------------------------------------------

    def permission_room(self, allocation: Allocation, hosts: list[str]) -> bool:
        """Whether installing permissions for `hosts` stays within the quota."""
        new = {h for h in hosts if h not in allocation.permissions}
        return len(allocation.permissions) + len(new) <= self.limits.permissions

    def install_permission(self, allocation: Allocation, host: str, now: float) -> None:
        """Install or refresh the permission for a peer IP (RFC 8656 §9.2)."""
        fresh = host not in allocation.permissions
        allocation.permissions[host] = now + PERMISSION_LIFETIME_S
        if fresh:
            self._push(now + PERMISSION_LIFETIME_S, "permission", (allocation, host))
            for binding in allocation.channels.values():
                if binding.peer[0] == host:
                    self._enable(binding)

    def channel_error(self, allocation: Allocation, number: int, peer: PeerAddress, now: float) -> int | None:
        """400 when the number or the peer is bound otherwise (RFC 8656 §11.2), 508 over quota."""
        binding = allocation.channels.get(number)
        if binding is not None:
            return None if binding.peer == peer else 400
        if any(b.peer == peer for b in allocation.channels.values()):
            return 400
        for held_number, (held_peer, until) in allocation.quarantine.items():
            if until > now and (held_number == number) != (held_peer == peer):
                return 400
        if len(allocation.channels) >= self.limits.channels:
            return 508
        return None

    def bind_channel(
        self, allocation: Allocation, number: int, peer: PeerAddress, relay: Relay, now: float
    ) -> None:
        """Create or refresh a channel and the permission for its peer (caller checked
        `channel_error`)."""
        binding = allocation.channels.get(number)
        if binding is None:
            binding = ChannelBinding(
                number, peer, relay, allocation, now + CHANNEL_LIFETIME_S, relay.sock.sendto
            )
            allocation.channels[number] = binding
            allocation.quarantine.pop(number, None)
            self._push(binding.expiry, "channel", binding)
        else:
            binding.expiry = now + CHANNEL_LIFETIME_S
        self.install_permission(allocation, peer[0], now)
        self._enable(binding)

    def _enable(self, binding: ChannelBinding) -> None:
        allocation = binding.allocation
        self.routes_for(allocation.tag)[(allocation.client_addr, binding.number)] = binding
        allocation.channel_by_peer[binding.peer] = binding.number

    def _disable(self, binding: ChannelBinding) -> None:
        allocation = binding.allocation
        self.routes.get(allocation.tag, {}).pop((allocation.client_addr, binding.number), None)
        allocation.channel_by_peer.pop(binding.peer, None)

    def forget_relay(self, allocation: Allocation, relay: Relay) -> None:
        """Drop the channels and permissions that went through `relay` (one family of a dual
        allocation is deleted, RFC 8656 §8.2)."""
        for number, binding in list(allocation.channels.items()):
            if binding.relay is relay:
                self._disable(binding)
                del allocation.channels[number]
        family_v6 = relay.family == 2
        for host in [h for h in allocation.permissions if (":" in h) == family_v6]:
            self._drop_permission(allocation, host)

    def revoke_peers(self, refused: Callable[[str], bool]) -> int:
        """Drop every permission (and its channels' routes) whose peer IP is now refused."""
        revoked = 0
        for allocation in self.allocations.values():
            for host in [h for h in allocation.permissions if refused(h)]:
                self._drop_permission(allocation, host)
                revoked += 1
        return revoked

    def _drop_permission(self, allocation: Allocation, host: str) -> None:
        del allocation.permissions[host]
        for binding in allocation.channels.values():
            if binding.peer[0] == host:
                self._disable(binding)

    # -- reservations (EVEN-PORT with the R bit) ------------------------------------------------

    def add_reservation(self, token: bytes, relay: Relay, now: float) -> None:
        """Hold a relay for a later Allocate with RESERVATION-TOKEN."""
        self.reservations[token] = (relay, now + RESERVATION_LIFETIME_S)
        self._push(now + RESERVATION_LIFETIME_S, "reservation", token)

    def take_reservation(self, token: bytes) -> Relay | None:
        """The reserved relay for `token`, removed from the table."""
        held = self.reservations.pop(token, None)
        return None if held is None else held[0]

    # -- timers ---------------------------------------------------------------------------------

    def _push(self, deadline: float, kind: str, ref: Any) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), kind, ref))

    def next_deadline(self) -> float:
        """When `expire` next has work to do (inf when never)."""
        return self._heap[0][0] if self._heap else float("inf")

    def expire(self, now: float) -> Expired:
        """Remove everything whose time has come; return what the service must close."""
        expired = Expired()
        while self._heap and self._heap[0][0] <= now:
            deadline, _, kind, ref = heapq.heappop(self._heap)
            handler = getattr(self, f"_expire_{kind}")
            handler(ref, deadline, now, expired)
        return expired

    def _expire_allocation(self, allocation: Allocation, deadline: float, now: float, out: Expired) -> None:
        if not allocation.alive or deadline != allocation.scheduled:
            return
        if allocation.expiry <= now:
            self.remove_allocation(allocation)
            out.allocations.append(allocation)
            return
        allocation.scheduled = allocation.expiry
        self._push(allocation.expiry, "allocation", allocation)

    def _expire_permission(
        self, ref: tuple[Allocation, str], deadline: float, now: float, out: Expired
    ) -> None:
        allocation, host = ref
        expiry = allocation.permissions.get(host)
        if not allocation.alive or expiry is None:
            return
        if expiry <= now:
            self._drop_permission(allocation, host)
        else:
            self._push(expiry, "permission", ref)

    def _expire_channel(self, binding: ChannelBinding, deadline: float, now: float, out: Expired) -> None:
        allocation = binding.allocation
        if not allocation.alive or allocation.channels.get(binding.number) is not binding:
            return
        if binding.expiry > now:
            self._push(binding.expiry, "channel", binding)
            return
        self._disable(binding)
        del allocation.channels[binding.number]
        until = now + CHANNEL_QUARANTINE_S
        allocation.quarantine[binding.number] = (binding.peer, until)
        self._push(until, "quarantine", (allocation, binding.number))

    def _expire_quarantine(
        self, ref: tuple[Allocation, int], deadline: float, now: float, out: Expired
    ) -> None:
        allocation, number = ref
        held = allocation.quarantine.get(number)
        if held is not None and held[1] <= now:
            del allocation.quarantine[number]

    def _expire_reservation(self, token: bytes, deadline: float, now: float, out: Expired) -> None:
        held = self.reservations.get(token)
        if held is not None and held[1] <= now:
            del self.reservations[token]
            out.relays.append(held[0])

    # -- metrics --------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Current allocations, permissions and channels, and relayed traffic so far."""
        totals = Counter(self.retired)
        permissions = channels = 0
        for allocation in self.allocations.values():
            permissions += len(allocation.permissions)
            channels += len(allocation.channels)
            totals.update(
                to_peer_bytes=allocation.to_peer_bytes,
                to_peer_datagrams=allocation.to_peer_datagrams,
                to_client_bytes=allocation.to_client_bytes,
                to_client_datagrams=allocation.to_client_datagrams,
            )
        return {
            "allocations": len(self.allocations),
            "permissions": permissions,
            "channels": channels,
            "reservations": len(self.reservations),
            **{
                k: totals[k]
                for k in ("to_peer_bytes", "to_peer_datagrams", "to_client_bytes", "to_client_datagrams")
            },
        }
