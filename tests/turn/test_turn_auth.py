"""Long-term credentials, TURN REST credentials, nonces, password algorithms and quotas."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from node.turn import rest_password
from wire.stun import (
    Attr,
    Attribute,
    Message,
    Method,
    PasswordAlgorithm,
    decode_error_code_untrusted,
    decode_message_untrusted,
    encode_message,
    encode_requested_transport,
)

from .conftest import REST_SECRET, TurnClient, TurnError, base_settings, start_turn

ALLOCATE_ATTRS = [Attribute(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))]


def rest_user(user: str, expires_at: int, secret: str = REST_SECRET) -> dict[str, str]:
    username = f"{expires_at}:{user}"
    return {"username": username, "password": rest_password(secret, username)}


async def expect_error(client: TurnClient, code: int) -> TurnError:
    with pytest.raises(TurnError) as info:
        await client.allocate()
    assert info.value.code == code
    return info.value


async def test_wrong_password_and_unknown_user(turn: Any, client_factory: Any) -> None:
    await expect_error(await client_factory(turn.udp, password="wrong"), 401)
    await expect_error(await client_factory(turn.udp, username="nobody"), 401)
    refusals = turn.service.statistics().refusals
    assert refusals["bad-credentials"] == 1 and refusals["unknown-user"] == 1


async def test_rest_credentials(turn: Any, client_factory: Any) -> None:
    now = int(time.time())
    assert await (await client_factory(turn.udp, **rest_user("alice", now + 600))).allocate()
    expired = await expect_error(await client_factory(turn.udp, **rest_user("alice", now - 1)), 401)
    assert expired.response.get(Attr.NONCE) is not None
    await expect_error(await client_factory(turn.udp, **rest_user("alice", now + 600, "other-secret")), 401)
    assert turn.service.statistics().refusals["expired-credential"] == 1


async def test_rest_secret_rotation_keeps_the_old_secret_for_the_grace_period(
    nursery: trio.Nursery, client_factory: Any
) -> None:
    turn = await start_turn(nursery, base_settings(rest_secrets=["old"]))
    turn.service.apply_settings(base_settings(rest_secrets=["new"], rest_secret_grace_s=3600.0))
    now = int(time.time())
    assert await (await client_factory(turn.udp, **rest_user("bob", now + 60, "old"))).allocate()
    assert await (await client_factory(turn.udp, **rest_user("bob", now + 60, "new"))).allocate()
    turn.service.apply_settings(base_settings(rest_secrets=["newer"], rest_secret_grace_s=0.0))
    await expect_error(await client_factory(turn.udp, **rest_user("bob", now + 60, "new")), 401)
    # "old" retired with an hour of grace: still accepted.
    assert await (await client_factory(turn.udp, **rest_user("bob", now + 60, "old"))).allocate()


async def test_issued_credentials_work(turn: Any, client_factory: Any) -> None:
    credential = turn.service.issue_credential("device-1", ttl_s=300)
    assert credential.username.endswith(":device-1")
    port = turn.udp[1]
    assert credential.uris == [
        f"stun:127.0.0.1:{port}",
        f"turn:127.0.0.1:{port}?transport=udp",
        f"turn:127.0.0.1:{port}?transport=tcp",
    ]
    client = await client_factory(turn.udp, username=credential.username, password=credential.password)
    assert await client.allocate()


async def test_sha256_password_algorithm_and_userhash(turn: Any, client_factory: Any) -> None:
    client = await client_factory(turn.udp, algorithm=PasswordAlgorithm.SHA256)
    await client.allocate()
    response = await client.refresh()
    assert response.has(Attr.MESSAGE_INTEGRITY_SHA256) and not response.has(Attr.MESSAGE_INTEGRITY)
    hashed = await client_factory(turn.udp, algorithm=PasswordAlgorithm.SHA256, use_userhash=True)
    assert await hashed.allocate()
    md5 = await client_factory(turn.udp, algorithm=PasswordAlgorithm.MD5)
    assert await md5.allocate()


async def test_password_algorithms_bid_down_is_refused(turn: Any, client_factory: Any) -> None:
    client = await client_factory(turn.udp, algorithm=PasswordAlgorithm.MD5)
    challenge = await client.transact(client.build(Method.ALLOCATE, ALLOCATE_ATTRS))
    client.realm, client.nonce = challenge.get(Attr.REALM), challenge.get(Attr.NONCE)
    client.offered = b"\x00\x01\x00\x00"  # a man in the middle stripped SHA-256 from the offer
    with pytest.raises(TurnError) as info:
        await client.request(Method.ALLOCATE, ALLOCATE_ATTRS, retry=False)
    assert info.value.code == 400
    client.offered = challenge.get(Attr.PASSWORD_ALGORITHMS)
    assert await client.request(Method.ALLOCATE, ALLOCATE_ATTRS, retry=False)


async def test_stale_and_forged_nonces(
    nursery: trio.Nursery, client_factory: Any, autojump_clock: Any
) -> None:
    turn = await start_turn(nursery, base_settings(relay_thread=False, nonce_lifetime_s=60))
    client = await client_factory(turn.udp)
    await client.allocate()
    await trio.sleep(61)
    stale = await client.transact(client.build(Method.REFRESH, []))
    code, _ = decode_error_code_untrusted(stale.get(Attr.ERROR_CODE) or b"")
    assert code == 438 and stale.get(Attr.REALM) == b"asgard.test"
    fresh = stale.get(Attr.NONCE)
    assert fresh is not None and fresh != client.nonce
    client.nonce = fresh[:-4] + b"AAAA"
    forged = await client.transact(client.build(Method.REFRESH, []))
    assert decode_error_code_untrusted(forged.get(Attr.ERROR_CODE) or b"")[0] == 438
    client.nonce = fresh
    assert await client.refresh()
    refusals = turn.service.statistics().refusals
    assert refusals["stale-nonce"] == 1 and refusals["forged-nonce"] == 1


async def test_nonce_is_bound_to_the_client_address(turn: Any, client_factory: Any) -> None:
    first = await client_factory(turn.udp)
    await first.allocate()
    second = await client_factory(turn.udp)
    second.realm, second.nonce = first.realm, first.nonce
    response = await second.transact(second.build(Method.ALLOCATE, ALLOCATE_ATTRS))
    assert decode_error_code_untrusted(response.get(Attr.ERROR_CODE) or b"")[0] == 438


async def test_integrity_without_realm_is_a_400(turn: Any, client_factory: Any) -> None:
    client = await client_factory(turn.udp)
    await client.allocate()
    client.realm = b"asgard.test"
    request = client.build(Method.REFRESH, [])
    # Drop REALM by re-encoding without it.
    message = decode_message_untrusted(request)
    attrs = tuple(
        a for a in message.attributes if a.type not in (Attr.REALM, Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT)
    )
    stripped = encode_message(
        Message(message.method, message.cls, message.transaction_id, attrs), integrity_key=client.key()
    )
    response = await client.transact(stripped)
    assert decode_error_code_untrusted(response.get(Attr.ERROR_CODE) or b"")[0] == 400


async def test_quota_per_user_and_total(nursery: trio.Nursery, client_factory: Any) -> None:
    users = {"test": "secret", "a": "pa", "b": "pb"}
    turn = await start_turn(
        nursery, base_settings(users=users, max_allocations_per_user=2, max_allocations_total=3)
    )
    for _ in range(2):
        assert await (await client_factory(turn.udp)).allocate()
    await expect_error(await client_factory(turn.udp), 486)
    assert await (await client_factory(turn.udp, username="a", password="pa")).allocate()
    await expect_error(await client_factory(turn.udp, username="b", password="pb"), 508)
    refusals = turn.service.statistics().refusals
    assert refusals["quota-user"] == 1 and refusals["quota-total"] == 1


async def test_rest_quota_counts_the_user_not_the_credential(
    nursery: trio.Nursery, client_factory: Any
) -> None:
    turn = await start_turn(nursery, base_settings(max_allocations_per_user=1))
    now = int(time.time())
    assert await (await client_factory(turn.udp, **rest_user("carol", now + 100))).allocate()
    await expect_error(await client_factory(turn.udp, **rest_user("carol", now + 200)), 486)
    assert await (await client_factory(turn.udp, **rest_user("dave", now + 100))).allocate()
