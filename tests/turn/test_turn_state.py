"""Pure state with explicit `now`: allocations, permissions, channels, quarantine, reservations,
quotas, timers, the token bucket; nonces; credentials; settings validation."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from pydantic import ValidationError

from node.errors import InvalidInput, Unavailable
from node.turn import (
    ChainedUsers,
    ConfigUsers,
    TurnSettings,
    derive_keys,
    issue_rest_credential,
    rest_password,
    turn_uris,
)
from node.turn._nonce import NonceCheck, NonceIssuer
from node.turn.credentials import RestSecrets, parse_rest_username, rest_keys
from node.turn.state import Allocation, Limits, Relay, TokenBucket, TurnState
from wire.stun import PasswordAlgorithm, long_term_key, userhash


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, address: Any) -> int:
        self.sent.append((bytes(data), address))
        return len(data)


def make_allocation(
    state: TurnState,
    now: float,
    *,
    user: str = "u",
    client: tuple[str, int] = ("192.0.2.9", 5000),
    lifetime: float = 600,
) -> Allocation:
    relay = Relay(1, ("198.51.100.1", 50000), FakeSocket())
    allocation = Allocation(
        tag="udp", client_addr=client, username=user, user=user, key=b"k", integrity="sha1",
        relays={1: relay}, expiry=now + lifetime, transaction_id=b"t" * 12,
    )  # fmt: skip
    state.add_allocation(allocation, now)
    return allocation


PEER = ("203.0.113.5", 4000)


def test_allocation_expires_at_its_lifetime() -> None:
    state = TurnState()
    allocation = make_allocation(state, 0.0)
    assert state.next_deadline() == 600.0
    assert state.expire(599.9).allocations == []
    expired = state.expire(600.0)
    assert expired.allocations == [allocation] and not allocation.alive
    assert state.allocation("udp", allocation.client_addr) is None and state.per_user == {}


def test_refresh_later_and_shorter() -> None:
    state = TurnState()
    allocation = make_allocation(state, 0.0, lifetime=3600)
    state.refresh(allocation, 600, now=100.0)  # shorter: an earlier timer entry
    assert state.next_deadline() == 700.0
    state.refresh(allocation, 3600, now=650.0)  # later: the early entry re-arms itself
    assert state.expire(700.0).allocations == []
    assert state.expire(4249.0).allocations == []
    assert state.expire(4250.0).allocations == [allocation]


def test_permission_and_channel_routes_follow_both_lifetimes() -> None:
    state = TurnState()
    allocation = make_allocation(state, 0.0, lifetime=3600)
    routes = state.routes_for("udp")
    state.bind_channel(allocation, 0x4001, PEER, allocation.relays[1], now=0.0)
    key = (allocation.client_addr, 0x4001)
    assert routes[key].peer == PEER and allocation.channel_by_peer[PEER] == 0x4001
    state.expire(300.0)  # permission gone: the channel stays but carries nothing
    assert (
        PEER[0] not in allocation.permissions and key not in routes and PEER not in allocation.channel_by_peer
    )
    assert 0x4001 in allocation.channels
    state.install_permission(allocation, PEER[0], now=310.0)  # back
    assert key in routes and allocation.channel_by_peer[PEER] == 0x4001
    state.expire(600.0)  # channel lifetime over
    assert 0x4001 not in allocation.channels and key not in routes
    assert state.channel_error(allocation, 0x4001, ("203.0.113.6", 1), now=700.0) == 400
    assert state.channel_error(allocation, 0x4002, PEER, now=700.0) == 400
    assert state.channel_error(allocation, 0x4001, PEER, now=700.0) is None
    state.expire(900.0)  # quarantine over
    assert state.channel_error(allocation, 0x4001, ("203.0.113.6", 1), now=900.0) is None


def test_channel_conflicts_and_quota() -> None:
    state = TurnState(Limits(channels=1, permissions=2))
    allocation = make_allocation(state, 0.0)
    state.bind_channel(allocation, 0x4000, PEER, allocation.relays[1], now=0.0)
    assert state.channel_error(allocation, 0x4000, PEER, 1.0) is None  # a refresh
    assert state.channel_error(allocation, 0x4000, ("203.0.113.6", 1), 1.0) == 400
    assert state.channel_error(allocation, 0x4001, PEER, 1.0) == 400
    assert state.channel_error(allocation, 0x4001, ("203.0.113.6", 1), 1.0) == 508
    assert state.permission_room(allocation, ["203.0.113.6"]) and not state.permission_room(
        allocation, ["a", "b"]
    )


def test_quotas() -> None:
    state = TurnState(Limits(per_user=2, total=3))
    make_allocation(state, 0.0, client=("192.0.2.1", 1))
    assert state.quota_error("u") is None
    make_allocation(state, 0.0, client=("192.0.2.1", 2))
    assert state.quota_error("u") == 486
    make_allocation(state, 0.0, user="v", client=("192.0.2.1", 3))
    assert state.quota_error("w") == 508


def test_remove_tag_and_counts() -> None:
    state = TurnState()
    allocation = make_allocation(state, 0.0)
    state.bind_channel(allocation, 0x4000, PEER, allocation.relays[1], now=0.0)
    allocation.to_peer_bytes, allocation.to_peer_datagrams = 100, 2
    assert state.counts()["channels"] == 1
    assert state.remove_tag("udp") == [allocation]
    counts = state.counts()
    assert (counts["allocations"], counts["to_peer_bytes"], counts["to_peer_datagrams"]) == (0, 100, 2)


def test_revoke_peers_and_forget_relay() -> None:
    state = TurnState()
    allocation = make_allocation(state, 0.0)
    state.bind_channel(allocation, 0x4000, PEER, allocation.relays[1], now=0.0)
    state.install_permission(allocation, "203.0.113.7", now=0.0)
    assert state.revoke_peers(lambda host: host == PEER[0]) == 1
    assert list(allocation.permissions) == ["203.0.113.7"] and not allocation.channel_by_peer
    state.forget_relay(allocation, allocation.relays[1])
    assert allocation.permissions == {} and allocation.channels == {}


def test_reservations_expire() -> None:
    state = TurnState()
    relay = Relay(1, ("198.51.100.1", 50001), FakeSocket())
    state.add_reservation(b"12345678", relay, now=0.0)
    assert state.expire(29.0).relays == []
    assert state.expire(30.0).relays == [relay]
    assert state.take_reservation(b"12345678") is None
    state.add_reservation(b"abcdefgh", relay, now=0.0)
    assert state.take_reservation(b"abcdefgh") is relay


def test_token_bucket() -> None:
    bucket = TokenBucket(100_000)
    assert bucket.take(100_000, 10.0)
    assert not bucket.take(1_000, 10.0)
    assert bucket.take(1_000, 10.02)  # 20 ms refill 2000 bytes
    assert not bucket.take(10_000, 10.02)
    assert not bucket.take(5_000, 9.0)  # a clock going backwards refills nothing
    assert bucket.take(900, 9.0)  # what was left (about 1000) is still there
    assert bucket.take(900, 9.01)  # and refilling resumes from the new origin


def test_nonces() -> None:
    issuer = NonceIssuer(lifetime_s=600, features=3, key=b"k" * 32)
    nonce = issuer.issue("udp|192.0.2.1|5", now=1000.0)
    assert nonce.startswith(b"obMatJos2AAAD")
    assert issuer.check(nonce, "udp|192.0.2.1|5", now=1600.0) is NonceCheck.VALID
    assert issuer.check(nonce, "udp|192.0.2.1|5", now=1600.1) is NonceCheck.STALE
    assert issuer.check(nonce, "udp|192.0.2.1|6", now=1001.0) is NonceCheck.FORGED
    assert issuer.check(nonce[:-2] + b"AA", "udp|192.0.2.1|5", now=1001.0) is NonceCheck.FORGED
    other = NonceIssuer(lifetime_s=600, features=3, key=b"x" * 32)
    assert other.check(nonce, "udp|192.0.2.1|5", now=1001.0) is NonceCheck.FORGED
    assert issuer.check(b"obMatJos2AAAD!!", "c", 0.0) is NonceCheck.FORGED


def test_rest_password_matches_the_turn_rest_api_formula() -> None:
    username = "1700000000:alice"
    expected = base64.b64encode(hmac.new(b"s3cr3t", username.encode(), hashlib.sha1).digest()).decode()
    assert rest_password("s3cr3t", username) == expected
    assert parse_rest_username(username) == (1700000000, "alice")
    assert parse_rest_username("1700000000") == (1700000000, "")
    assert parse_rest_username("alice:1700000000") is None


def test_rest_secrets_rotation_and_grace() -> None:
    secrets = RestSecrets(["a"])
    secrets.update(["b", "a"], unix_now=0.0, grace_s=100.0)
    assert secrets.accepted(0.0) == ["b", "a"]
    secrets.update(["b"], unix_now=10.0, grace_s=100.0)
    assert secrets.accepted(110.0) == ["b", "a"]
    assert secrets.accepted(110.1) == ["b"]
    secrets.update(["a", "b"], unix_now=200.0, grace_s=100.0)  # a secret coming back is current again
    assert secrets.accepted(1e9) == ["a", "b"]


def test_rest_keys() -> None:
    secrets = RestSecrets(["s"])
    assert rest_keys("alice", "r", secrets, 0.0) is None
    assert rest_keys("100:alice", "r", secrets, 101.0) == []
    keys = rest_keys("100:alice", "r", secrets, 99.0)
    assert keys == [derive_keys("100:alice", "r", rest_password("s", "100:alice"))]
    assert rest_keys("100:alice", "r", RestSecrets([]), 0.0) is None


def test_config_users_and_chain() -> None:
    users = ConfigUsers({"alice": "pw"}, "realm")
    keys = users.lookup("alice", "realm")
    assert keys is not None and keys.md5 == long_term_key("alice", "realm", "pw")
    assert keys.key_for(PasswordAlgorithm.SHA256) == long_term_key(
        "alice", "realm", "pw", PasswordAlgorithm.SHA256
    )
    assert keys.key_for(99) is None
    assert users.lookup("alice", "other") is None and users.lookup("bob", "realm") is None
    assert users.lookup_userhash(userhash("alice", "realm"), "realm") == ("alice", keys)

    class StoreUsers:
        def lookup(self, username: str, realm: str) -> Any:
            return derive_keys(username, realm, "store-pw") if username == "bob" else None

    chain = ChainedUsers([users, StoreUsers()])
    assert chain.lookup("bob", "realm") == derive_keys("bob", "realm", "store-pw")
    assert chain.lookup("alice", "realm") == keys
    assert chain.lookup_userhash(userhash("bob", "realm"), "realm") is None


def test_issue_rest_credential() -> None:
    credential = issue_rest_credential("s", "dev", ttl_s=60, unix_now=1000.5, realm="r", uris=["stun:h:1"])
    assert credential.username == "1060:dev" and credential.password == rest_password("s", "1060:dev")
    assert credential.as_dict()["ttl"] == 60 and credential.as_dict()["uris"] == ["stun:h:1"]
    with pytest.raises(InvalidInput):
        issue_rest_credential("s", "a:b", ttl_s=60, unix_now=0, realm="r", uris=[])
    with pytest.raises(Unavailable):
        issue_rest_credential("", "dev", ttl_s=60, unix_now=0, realm="r", uris=[])
    assert turn_uris("2001:db8::1", 3478, tcp=False) == [
        "stun:[2001:db8::1]:3478",
        "turn:[2001:db8::1]:3478?transport=udp",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"peer_deny": ["not-a-net"]},
        {"relay_port_min": 60000, "relay_port_max": 50000},
        {"default_lifetime_s": 4000, "max_lifetime_s": 3600},
        {"relay_ipv4": "::1"},
        {"unknown_key": 1},
    ],
)
def test_settings_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TurnSettings(**bad)
