"""TURN request processing (RFC 8656 §7-§11) on top of `TurnState`, pure: bytes in, an `Outcome`
out (a reply, relays to open or close, a datagram to send). The service does the I/O.

Allocate is two-phase: `handle` returns a `PendingAllocate` when relay sockets are needed, the
service binds them and calls `complete_allocate` without awaiting in between.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from node.turn._authn import OFFERED_ALGORITHMS_VALUE, Authenticator, AuthError, Principal
from node.turn.policy import PeerPolicy
from node.turn.state import Allocation, ClientAddress, PeerAddress, Relay, TurnState
from wire.stun import (
    CHANNEL_MAX,
    KNOWN_ATTRIBUTES,
    TRANSPORT_UDP,
    AddressFamily,
    Attr,
    Attribute,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    decode_address_family_untrusted,
    decode_channel_number_untrusted,
    decode_even_port_untrusted,
    decode_message_untrusted,
    decode_requested_transport_untrusted,
    decode_reservation_token_untrusted,
    decode_u32_untrusted,
    decode_xor_address_untrusted,
    encode_address_error_code,
    encode_error_code,
    encode_icmp,
    encode_message,
    encode_u32,
    encode_unknown_attributes,
    encode_xor_address,
    family_of,
    is_channel_number,
)

# RFC 5780 attributes need an alternate address this server does not have: 420 for them.
UNDERSTOOD = KNOWN_ATTRIBUTES - {Attr.CHANGE_REQUEST, Attr.RESPONSE_PORT, Attr.PADDING}
TURN_METHODS = frozenset({Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND})


@dataclass(frozen=True, slots=True)
class Client:
    """The client side of a 5-tuple: `tag` names the listener or TCP connection."""

    tag: Hashable
    addr: ClientAddress
    transport: str

    @property
    def nonce_id(self) -> str:
        """What nonces are bound to."""
        return f"{self.transport}|{self.addr[0]}|{self.addr[1]}"


@dataclass(slots=True)
class PendingAllocate:
    """An accepted Allocate waiting for its relay sockets."""

    client: Client
    request: Message
    principal: Principal
    lifetime_s: float
    families: tuple[int, ...]
    even_port: bool
    reserve_next: bool
    dont_fragment: bool


@dataclass(slots=True)
class OpenedRelays:
    """What the service could bind for a `PendingAllocate`."""

    relays: dict[int, Relay] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    reserved: Relay | None = None


@dataclass(slots=True)
class SendAction:
    """Send `data` from `relay` to `peer` (a Send indication)."""

    allocation: Allocation
    relay: Relay
    peer: PeerAddress
    data: bytes
    dont_fragment: bool


@dataclass(slots=True)
class Outcome:
    """What the service must do after a message."""

    reply: bytes | None = None
    pending: PendingAllocate | None = None
    created: Allocation | None = None
    closed: list[Allocation] = field(default_factory=list)
    release: list[Relay] = field(default_factory=list)
    send: SendAction | None = None


@dataclass
class ProtocolConfig:
    """The parts of the settings the protocol reads (lifetimes and SOFTWARE change live)."""

    software: str | None = "asgard"
    default_lifetime_s: int = 600
    max_lifetime_s: int = 3600
    families: frozenset[int] = frozenset({AddressFamily.IPV4})
    max_channel: int = CHANNEL_MAX


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TurnProtocol:
    """Answers STUN Binding and TURN requests and Send indications."""

    def __init__(
        self, state: TurnState, auth: Authenticator, policy: PeerPolicy, config: ProtocolConfig
    ) -> None:
        self.state = state
        self.auth = auth
        self.policy = policy
        self.config = config
        self.refusals: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self._tid = random.Random(os.urandom(16))

    # -- entry points ---------------------------------------------------------------------------

    def handle(self, data: bytes, client: Client, now: float, unix_now: float) -> Outcome:
        """Process one STUN message from `client`."""
        try:
            message = decode_message_untrusted(data)
        except StunDecodeError as exc:
            return self._undecodable(exc)
        if message.cls == MessageClass.REQUEST:
            if message.method == Method.BINDING:
                return self._binding(message, client)
            if message.method in TURN_METHODS:
                return self._turn_request(message, client, now, unix_now)
            self.refusals["bad-request"] += 1
            return Outcome(self._reply(message, [], error=400, reason="Unknown method"))
        if message.cls == MessageClass.INDICATION and message.method == Method.SEND:
            return self._send(message, client, now)
        self.drops["ignored-message"] += 1
        return Outcome()

    def complete_allocate(self, pending: PendingAllocate, opened: OpenedRelays, now: float) -> Outcome:
        """Finish an Allocate with the relays the service bound."""
        primary = pending.families[0]
        extra = [*opened.relays.values(), *([opened.reserved] if opened.reserved else [])]
        if primary not in opened.relays:
            code = opened.failed.get(primary, 508)
            self.refusals["capacity" if code == 508 else "address-family"] += 1
            return Outcome(
                self._reply(pending.request, [], error=code, principal=pending.principal), release=extra
            )
        token = None
        if opened.reserved is not None:
            token = os.urandom(8)
            self.state.add_reservation(token, opened.reserved, now)
        allocation = self._create(pending, opened.relays, now)
        attrs = self._allocate_attributes(allocation, pending.client, pending.request, token, now)
        for family, code in opened.failed.items():
            attrs.append(Attribute(Attr.ADDRESS_ERROR_CODE, encode_address_error_code(family, code)))
        return Outcome(self._reply(pending.request, attrs, principal=pending.principal), created=allocation)

    def data_indication(self, peer: PeerAddress, data: bytes | memoryview) -> bytes:
        """A Data indication carrying `data` from `peer` (RFC 8656 §10.3)."""
        tid = self._tid.randbytes(12)
        attrs = (
            Attribute(Attr.XOR_PEER_ADDRESS, encode_xor_address(peer[0], peer[1], tid)),
            Attribute(Attr.DATA, bytes(data)),
        )
        return encode_message(Message(Method.DATA, MessageClass.INDICATION, tid, attrs))

    def icmp_indication(
        self, allocation: Allocation, peer: PeerAddress, icmp_type: int, icmp_code: int, error_data: int
    ) -> bytes | None:
        """A Data indication with ICMP for a peer the client has a permission for (§11.5)."""
        if peer[0] not in allocation.permissions:
            return None
        tid = self._tid.randbytes(12)
        attrs = (
            Attribute(Attr.XOR_PEER_ADDRESS, encode_xor_address(peer[0], peer[1], tid)),
            Attribute(Attr.ICMP, encode_icmp(icmp_type & 0x7F, icmp_code & 0x1FF, error_data)),
        )
        return encode_message(Message(Method.DATA, MessageClass.INDICATION, tid, attrs))

    # -- replies --------------------------------------------------------------------------------

    def _reply(
        self,
        request: Message,
        attrs: list[Attribute],
        *,
        error: int | None = None,
        reason: str | None = None,
        principal: Principal | None = None,
    ) -> bytes:
        body = list(attrs)
        if error is not None:
            body.insert(0, Attribute(Attr.ERROR_CODE, encode_error_code(error, reason)))
        if self.config.software:
            body.append(Attribute(Attr.SOFTWARE, self.config.software.encode()))
        cls = MessageClass.ERROR if error is not None else MessageClass.SUCCESS
        return encode_message(
            Message(request.method, cls, request.transaction_id, tuple(body)),
            integrity_key=principal.key if principal else None,
            integrity="sha256" if principal and principal.integrity == "sha256" else "sha1",
            fingerprint=request.has(Attr.FINGERPRINT),
        )

    def _undecodable(self, exc: StunDecodeError) -> Outcome:
        if exc.hint != 400 or exc.transaction_id is None or exc.method is None:
            self.drops["malformed"] += 1
            return Outcome()
        self.refusals["bad-request"] += 1
        request = Message(exc.method, MessageClass.REQUEST, exc.transaction_id)
        return Outcome(self._reply(request, [], error=400, reason=str(exc)[:100]))

    def _challenge(self, request: Message, client: Client, error: AuthError, now: float) -> Outcome:
        self.refusals[error.reason] += 1
        if error.code == 400:
            return Outcome(self._reply(request, [], error=400))
        attrs = [
            Attribute(Attr.REALM, self.auth.realm.encode()),
            Attribute(Attr.NONCE, self.auth.nonces.issue(client.nonce_id, now)),
            Attribute(Attr.PASSWORD_ALGORITHMS, OFFERED_ALGORITHMS_VALUE),
        ]
        return Outcome(self._reply(request, attrs, error=error.code))

    # -- STUN Binding ---------------------------------------------------------------------------

    def _binding(self, message: Message, client: Client) -> Outcome:
        unknown = message.unknown_comprehension_required(UNDERSTOOD)
        if unknown:
            self.refusals["unknown-attribute"] += 1
            attrs = [Attribute(Attr.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(unknown))]
            return Outcome(self._reply(message, attrs, error=420))
        mapped = encode_xor_address(client.addr[0], client.addr[1], message.transaction_id)
        return Outcome(self._reply(message, [Attribute(Attr.XOR_MAPPED_ADDRESS, mapped)]))

    # -- TURN requests --------------------------------------------------------------------------

    def _turn_request(self, message: Message, client: Client, now: float, unix_now: float) -> Outcome:
        principal = self.auth.authenticate(message, client.nonce_id, now, unix_now)
        if isinstance(principal, AuthError):
            return self._challenge(message, client, principal, now)
        unknown = message.unknown_comprehension_required(UNDERSTOOD)
        if unknown:
            self.refusals["unknown-attribute"] += 1
            attrs = [Attribute(Attr.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(unknown))]
            return Outcome(self._reply(message, attrs, error=420, principal=principal))
        try:
            return self._dispatch(message, client, principal, now)
        except _Refused as refused:
            self.refusals[refused.reason] += 1
            return Outcome(self._reply(message, [], error=refused.code, principal=principal))
        except StunDecodeError:
            self.refusals["bad-request"] += 1
            return Outcome(self._reply(message, [], error=400, principal=principal))

    def _dispatch(self, message: Message, client: Client, principal: Principal, now: float) -> Outcome:
        allocation = self.state.allocation(client.tag, client.addr)
        if allocation is not None and allocation.username != principal.username:
            raise _Refused(441, "wrong-credentials")
        if message.method == Method.ALLOCATE:
            return self._allocate(message, client, principal, allocation, now)
        if allocation is None:
            raise _Refused(437, "allocation-mismatch")
        if message.method == Method.REFRESH:
            return self._refresh(message, principal, allocation, now)
        if message.method == Method.CREATE_PERMISSION:
            return self._create_permission(message, principal, allocation, now)
        return self._channel_bind(message, principal, allocation, now)

    def _lifetime(self, message: Message) -> int:
        value = message.get(Attr.LIFETIME)
        if value is None:
            return self.config.default_lifetime_s
        requested = decode_u32_untrusted(value)
        if requested == 0:
            return 0
        # RFC 8656 §7.2 / §8.2: min(requested, maximum), but never below the default.
        return max(self.config.default_lifetime_s, min(requested, self.config.max_lifetime_s))

    def _allocate(
        self, message: Message, client: Client, principal: Principal, existing: Allocation | None, now: float
    ) -> Outcome:
        if existing is not None:
            if existing.transaction_id != message.transaction_id:
                raise _Refused(437, "allocation-mismatch")
            attrs = self._allocate_attributes(existing, client, message, None, now)  # a retransmission
            return Outcome(self._reply(message, attrs, principal=principal))
        transport = message.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            raise _Refused(400, "bad-request")
        if decode_requested_transport_untrusted(transport) != TRANSPORT_UDP:
            raise _Refused(442, "unsupported-transport")
        token, families, even, reserve = self._allocate_options(message)
        quota = self.state.quota_error(principal.user)
        if quota is not None:
            raise _Refused(quota, "quota-user" if quota == 486 else "quota-total")
        lifetime = self._lifetime(message) or self.config.default_lifetime_s
        pending = PendingAllocate(
            client, message, principal, lifetime, families, even, reserve, message.has(Attr.DONT_FRAGMENT)
        )
        if token is None:
            return Outcome(pending=pending)
        relay = self.state.take_reservation(token)
        if relay is None:
            raise _Refused(508, "bad-reservation")
        allocation = self._create(pending, {relay.family: relay}, now)
        attrs = self._allocate_attributes(allocation, client, message, None, now)
        return Outcome(self._reply(message, attrs, principal=principal), created=allocation)

    def _allocate_options(self, message: Message) -> tuple[bytes | None, tuple[int, ...], bool, bool]:
        """(reservation token, families, even port, reserve next) per RFC 8656 §7.2."""
        token_value = message.get(Attr.RESERVATION_TOKEN)
        even_value = message.get(Attr.EVEN_PORT)
        requested = message.get(Attr.REQUESTED_ADDRESS_FAMILY)
        additional = message.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
        if token_value is not None and (
            even_value is not None or requested is not None or additional is not None
        ):
            raise _Refused(400, "bad-request")
        if requested is not None and additional is not None:
            raise _Refused(400, "bad-request")
        token = None if token_value is None else decode_reservation_token_untrusted(token_value)
        families: tuple[int, ...] = (AddressFamily.IPV4,)
        if requested is not None:
            family = decode_address_family_untrusted(requested)
            if family not in (AddressFamily.IPV4, AddressFamily.IPV6) or family not in self.config.families:
                raise _Refused(440, "address-family")
            families = (family,)
        elif additional is not None:
            if decode_address_family_untrusted(additional) != AddressFamily.IPV6:
                raise _Refused(400, "bad-request")
            families = (AddressFamily.IPV4, AddressFamily.IPV6)
        if families[0] not in self.config.families:
            raise _Refused(440, "address-family")
        reserve = decode_even_port_untrusted(even_value) if even_value is not None else False
        return token, families, even_value is not None, reserve

    def _create(self, pending: PendingAllocate, relays: dict[int, Relay], now: float) -> Allocation:
        principal, client = pending.principal, pending.client
        allocation = Allocation(
            tag=client.tag,
            client_addr=client.addr,
            username=principal.username,
            user=principal.user,
            key=principal.key,
            integrity=principal.integrity,
            relays=relays,
            expiry=now + pending.lifetime_s,
            transaction_id=pending.request.transaction_id,
            dont_fragment=pending.dont_fragment,
        )
        self.state.add_allocation(allocation, now)
        return allocation

    def _allocate_attributes(
        self, allocation: Allocation, client: Client, request: Message, token: bytes | None, now: float
    ) -> list[Attribute]:
        tid = request.transaction_id
        attrs = [
            Attribute(Attr.XOR_RELAYED_ADDRESS, encode_xor_address(*relay.address, tid))
            for relay in sorted(allocation.relays.values(), key=lambda r: r.family)
        ]
        remaining = max(0, round(allocation.expiry - now))
        attrs.append(Attribute(Attr.LIFETIME, encode_u32(remaining)))
        if token is not None:
            attrs.append(Attribute(Attr.RESERVATION_TOKEN, token))
        attrs.append(
            Attribute(Attr.XOR_MAPPED_ADDRESS, encode_xor_address(client.addr[0], client.addr[1], tid))
        )
        return attrs

    def _refresh(self, message: Message, principal: Principal, allocation: Allocation, now: float) -> Outcome:
        lifetime = self._lifetime(message)
        requested = message.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if requested is not None and decode_address_family_untrusted(requested) not in allocation.relays:
            raise _Refused(443, "address-family")
        if lifetime == 0:
            if requested is not None and len(allocation.relays) > 1:
                # RFC 8656 §8.2: a dual allocation can drop one family and keep the other.
                relay = allocation.relays.pop(decode_address_family_untrusted(requested))
                self.state.forget_relay(allocation, relay)
                attrs = [Attribute(Attr.LIFETIME, encode_u32(max(0, round(allocation.expiry - now))))]
                return Outcome(self._reply(message, attrs, principal=principal), release=[relay])
            self.state.remove_allocation(allocation)
            attrs = [Attribute(Attr.LIFETIME, encode_u32(0))]
            return Outcome(self._reply(message, attrs, principal=principal), closed=[allocation])
        self.state.refresh(allocation, lifetime, now)
        attrs = [Attribute(Attr.LIFETIME, encode_u32(lifetime))]
        return Outcome(self._reply(message, attrs, principal=principal))

    def _peers(self, message: Message, allocation: Allocation) -> list[PeerAddress]:
        values = message.get_all(Attr.XOR_PEER_ADDRESS)
        if not values:
            raise _Refused(400, "bad-request")
        peers = [decode_xor_address_untrusted(v, message.transaction_id) for v in values]
        for host, _ in peers:
            if not self.policy.allows(host):
                raise _Refused(403, "peer-denied")
            if family_of(host) not in allocation.relays:
                raise _Refused(443, "address-family")
        return peers

    def _create_permission(
        self, message: Message, principal: Principal, allocation: Allocation, now: float
    ) -> Outcome:
        hosts = [host for host, _ in self._peers(message, allocation)]
        if not self.state.permission_room(allocation, hosts):
            raise _Refused(508, "quota-permissions")
        for host in hosts:
            self.state.install_permission(allocation, host, now)
        return Outcome(self._reply(message, [], principal=principal))

    def _channel_bind(
        self, message: Message, principal: Principal, allocation: Allocation, now: float
    ) -> Outcome:
        number_value = message.get(Attr.CHANNEL_NUMBER)
        if number_value is None or len(message.get_all(Attr.XOR_PEER_ADDRESS)) != 1:
            raise _Refused(400, "bad-request")
        number = decode_channel_number_untrusted(number_value)
        if not is_channel_number(number, self.config.max_channel):
            raise _Refused(400, "bad-request")
        peer = self._peers(message, allocation)[0]
        error = self.state.channel_error(allocation, number, peer, now)
        if error is not None:
            raise _Refused(error, "channel-conflict" if error == 400 else "quota-channels")
        relay = allocation.relays[family_of(peer[0])]
        self.state.bind_channel(allocation, number, peer, relay, now)
        return Outcome(self._reply(message, [], principal=principal))

    # -- Send indication ------------------------------------------------------------------------

    def _send(self, message: Message, client: Client, now: float) -> Outcome:
        allocation = self.state.allocation(client.tag, client.addr)
        action = send_action(message, allocation)
        if isinstance(action, str):
            self.drops[action] += 1
            return Outcome()
        return Outcome(send=action)


def send_action(message: Message, allocation: Allocation | None) -> SendAction | str:
    """What a Send indication asks for (RFC 8656 §10.2), or why it is dropped; no side effects,
    so the relay thread can use it too."""
    peer_value, data = message.get(Attr.XOR_PEER_ADDRESS), message.get(Attr.DATA)
    if allocation is None or not allocation.alive:
        return "no-allocation"
    if peer_value is None or data is None:
        return "bad-send"
    try:
        peer = decode_xor_address_untrusted(peer_value, message.transaction_id)
    except StunDecodeError:
        return "bad-send"
    relay = allocation.relays.get(family_of(peer[0]))
    if relay is None or peer[0] not in allocation.permissions:
        return "no-permission"
    return SendAction(allocation, relay, peer, data, message.has(Attr.DONT_FRAGMENT))
