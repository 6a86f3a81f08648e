"""Challenge-response proofs, backoff with jitter, link health, duplicate links, fan-out cover."""

from __future__ import annotations

import random

from node.mesh import _auth as auth
from node.mesh._linkstate import Backoff, LinkHealth, RecentlySeen, fan_out, keep_link_dialled_by

SECRET = "correct horse battery staple"


def _transcript(n1: bytes, n2: bytes, dialer: str = "a", acceptor: str = "b") -> bytes:
    return auth.transcript("home", dialer, acceptor, n1, n2)


def test_a_proof_verifies_only_for_its_key_role_and_transcript() -> None:
    key = auth.link_key(SECRET, "home")
    n1, n2 = auth.new_nonce(), auth.new_nonce()
    text = _transcript(n1, n2)
    good = auth.proof(key, auth.DIALER, text)
    assert auth.verify(key, auth.DIALER, text, good)
    assert not auth.verify(key, auth.ACCEPTOR, text, good)  # no reflection
    assert not auth.verify(auth.link_key("another secret here!", "home"), auth.DIALER, text, good)
    assert not auth.verify(auth.link_key(SECRET, "other"), auth.DIALER, text, good)
    assert not auth.verify(key, auth.DIALER, _transcript(n1, auth.new_nonce()), good)  # fresh nonce
    assert not auth.verify(key, auth.DIALER, _transcript(n1, n2, "c", "b"), good)  # other pair
    assert not auth.verify(key, auth.DIALER, text, good[:-1] + bytes([good[-1] ^ 1]))


def test_transcript_fields_cannot_be_shifted() -> None:
    n = auth.new_nonce()
    assert auth.transcript("c", "ab", "c", n, n) != auth.transcript("c", "a", "bc", n, n)


def test_node_ids_and_nonces_are_checked() -> None:
    assert auth.valid_node_id("0f8d2c1e-9a3b-4c5d-8e7f-1a2b3c4d5e6f")
    assert not auth.valid_node_id("") and not auth.valid_node_id("x" * 65)
    assert not auth.valid_node_id("a b")
    assert auth.valid_nonce(auth.new_nonce()) and not auth.valid_nonce(b"short")


def test_backoff_doubles_with_equal_jitter_up_to_the_maximum() -> None:
    backoff = Backoff(0.2, 3.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    steps = [min(3.0, 0.2 * 2**i) for i in range(8)]
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
    assert len({round(d, 6) for d in delays[-3:]}) == 3  # jittered, not in lockstep
    backoff.reset()
    assert backoff.next_delay() <= 0.2


def test_link_health_measures_rtt_and_declares_silence() -> None:
    health = LinkHealth(last_heard=0.0)
    first = health.ping(1.0)
    second = health.ping(2.0)
    assert health.pong(first, 1.010) is not None
    assert health.pong(first, 1.020) is None  # answered already
    assert health.pong(second, 2.030) is not None
    assert health.rtt_min_s is not None and abs(health.rtt_min_s - 0.010) < 1e-9
    assert health.rtt_ewma_s is not None and 0.010 < health.rtt_ewma_s < 0.030
    assert not health.dead(5.0, 5.0)
    assert health.dead(7.1, 5.0)
    shown = health.as_dict(3.0)
    assert shown["rtt_last_ms"] == 30.0 and shown["pongs"] == 2


def test_both_ends_keep_the_same_duplicate_link() -> None:
    assert keep_link_dialled_by("b", "a") == keep_link_dialled_by("a", "b") == "a"


def test_fan_out_in_a_full_mesh_gives_each_node_one_copy() -> None:
    nodes = ["a", "b", "c", "d"]
    copies = {n: 0 for n in nodes}
    pending = [("a", ["a"])]
    copies["a"] = 1
    while pending:
        at, covered = pending.pop()
        targets, cover = fan_out(at, [n for n in nodes if n != at], covered)
        for target in targets:
            copies[target] += 1
            pending.append((target, cover))
    assert copies == {n: 1 for n in nodes}


def test_fan_out_reaches_every_node_of_a_chain() -> None:
    links = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    reached, pending = {"a"}, [("a", ["a"])]
    while pending:
        at, covered = pending.pop()
        targets, cover = fan_out(at, links[at], covered)
        reached.update(targets)
        pending += [(t, cover) for t in targets]
    assert reached == {"a", "b", "c"}


def test_recently_seen_is_bounded() -> None:
    seen = RecentlySeen(2)
    assert seen.add(1) and not seen.add(1)
    seen.add(2)
    seen.add(3)
    assert len(seen) == 2 and seen.add(1)
