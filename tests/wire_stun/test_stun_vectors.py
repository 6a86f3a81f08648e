"""RFC 5769 test vectors (all four) and RFC 8489 Appendix B.1 as corrected by erratum 6268.

Each vector must verify as published and must fail after any single bit flip in the bytes its
MESSAGE-INTEGRITY / FINGERPRINT cover.
"""

from __future__ import annotations

import pytest

from wire import DecodeError
from wire.stun import (
    Attr,
    Attribute,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    SecurityFeature,
    StreamDecoder,
    StunFrame,
    decode_message_untrusted,
    decode_password_algorithm_untrusted,
    decode_text_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_xor_address,
    long_term_key,
    nonce_features,
    userhash,
    verify_message_integrity,
    verify_message_integrity_sha256,
)


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 §2.1-§2.4 (padding of SOFTWARE/USERNAME in §2.1-2.3 is 0x20 in the RFC, kept as is).
SAMPLE_REQUEST = unhex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf""")
SAMPLE_IPV4_RESPONSE = unhex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96""")
SAMPLE_IPV6_RESPONSE = unhex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c""")
SAMPLE_LONG_TERM_REQUEST = unhex("""
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66""")
# RFC 8489 Appendix B.1 with verified erratum 6268 (message length 0x90, PASSWORD-ALGORITHM
# SHA-256 added, MESSAGE-INTEGRITY-SHA256 recomputed).
RFC8489_B1 = unhex("""
    00 01 00 90 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 1e 00 20 4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f
                24 81 94 15 56 9e 60 b2 05 c4 6e 41 40 7f 17 04
    00 15 00 29 6f 62 4d 61 74 4a 6f 73 32 41 41 41 43 66 2f 2f
                34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39
                46 53 54 76 79 36 34 73 41 00 00 00
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 1d 00 04 00 02 00 00
    00 1c 00 20 b5 c7 bf 00 5b 6c 52 a2 1c 51 c5 e8 92 f8 19 24
                13 62 96 cb 92 7c 43 14 93 09 27 8c c6 51 8e 65""")

SHORT_TERM_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # "matrix" in katakana, RFC 5769 §2.4
# RFC 5769 §2.4 gives the password as "TheM\u00aatr\u2168" before SASLprep; RFC 8489 keys use
# OpaqueString, which keeps those characters, so both vectors are keyed with the prepared form.
PASSWORD = "TheMatrIX"
REALM = "example.org"
NONCE_2_4 = "f//499k954d6OL34oL9FSTvy64sA"


def _verifies(data: bytes, key: bytes, *, sha256: bool = False) -> bool:
    try:
        message = decode_message_untrusted(data)
    except DecodeError:
        return False
    if sha256:
        return verify_message_integrity_sha256(message, key)
    return verify_message_integrity(message, key)


def _covered(data: bytes) -> list[int]:
    """Indexes covered by MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT: everything except the type
    field of FINGERPRINT itself. A flip there turns FINGERPRINT into an unknown attribute after
    MESSAGE-INTEGRITY, which RFC 8489 §14.5 says to ignore, leaving the protected bytes intact."""
    offset = decode_message_untrusted(data).offset_of(Attr.FINGERPRINT)
    skipped = set() if offset is None else {offset, offset + 1}
    return [i for i in range(len(data)) if i not in skipped]


def _flips(data: bytes):
    for index in _covered(data):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[index] ^= 1 << bit
            yield index, bit, bytes(flipped)


def test_sample_request_decodes_and_verifies() -> None:
    message = decode_message_untrusted(SAMPLE_REQUEST)
    assert (message.method, message.cls) == (Method.BINDING, MessageClass.REQUEST)
    assert message.transaction_id == unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
    assert message.get(Attr.SOFTWARE) == b"STUN test client"
    assert message.get(Attr.USERNAME) == b"evtj:h6vY"
    assert message.get(Attr.PRIORITY) == unhex("6e 00 01 ff")
    assert message.get(Attr.ICE_CONTROLLED) == unhex("93 2f f9 b1 51 26 3b 36")
    assert [a.type for a in message.attributes] == [
        Attr.SOFTWARE, Attr.PRIORITY, Attr.ICE_CONTROLLED, Attr.USERNAME,
        Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT,
    ]  # fmt: skip
    assert verify_message_integrity(message, SHORT_TERM_KEY)
    assert not verify_message_integrity(message, SHORT_TERM_KEY + b"x")


@pytest.mark.parametrize(
    ("vector", "host"),
    [
        (SAMPLE_IPV4_RESPONSE, "192.0.2.1"),
        (SAMPLE_IPV6_RESPONSE, "2001:db8:1234:5678:11:2233:4455:6677"),
    ],
)
def test_sample_responses_decode_their_mapped_address(vector: bytes, host: str) -> None:
    message = decode_message_untrusted(vector)
    assert (message.method, message.cls) == (Method.BINDING, MessageClass.SUCCESS)
    assert message.get(Attr.SOFTWARE) == b"test vector"
    value = message.get(Attr.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert decode_xor_address_untrusted(value, message.transaction_id) == (host, 32853)
    assert encode_xor_address(host, 32853, message.transaction_id) == value
    assert verify_message_integrity(message, SHORT_TERM_KEY)


def test_long_term_request_verifies_and_reencodes_byte_for_byte() -> None:
    message = decode_message_untrusted(SAMPLE_LONG_TERM_REQUEST)
    assert message.get(Attr.USERNAME) == USERNAME.encode()
    assert message.get(Attr.NONCE) == NONCE_2_4.encode()
    assert message.get(Attr.REALM) == REALM.encode()
    key = long_term_key(USERNAME, REALM, PASSWORD)
    assert verify_message_integrity(message, key)
    assert not verify_message_integrity(message, long_term_key(USERNAME, REALM, "thematrix"))
    rebuilt = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        message.transaction_id,
        (
            Attribute(Attr.USERNAME, USERNAME.encode()),
            Attribute(Attr.NONCE, NONCE_2_4.encode()),
            Attribute(Attr.REALM, REALM.encode()),
        ),
    )
    assert encode_message(rebuilt, integrity_key=key) == SAMPLE_LONG_TERM_REQUEST


def test_rfc8489_b1_with_erratum_6268() -> None:
    message = decode_message_untrusted(RFC8489_B1)
    key = long_term_key(USERNAME, REALM, PASSWORD, PasswordAlgorithm.SHA256)
    assert verify_message_integrity_sha256(message, key)
    assert not verify_message_integrity_sha256(
        message, long_term_key(USERNAME, REALM, PASSWORD, PasswordAlgorithm.MD5)
    )
    assert message.get(Attr.USERHASH) == userhash(USERNAME, REALM)
    nonce = message.get(Attr.NONCE)
    assert nonce is not None
    assert decode_text_untrusted(nonce) == "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"
    assert nonce_features(nonce) == SecurityFeature.USERNAME_ANONYMITY
    algorithm = message.get(Attr.PASSWORD_ALGORITHM)
    assert algorithm is not None
    assert decode_password_algorithm_untrusted(algorithm) == (PasswordAlgorithm.SHA256, b"")
    rebuilt = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        message.transaction_id,
        tuple(a for a in message.attributes if a.type != Attr.MESSAGE_INTEGRITY_SHA256),
    )
    assert encode_message(rebuilt, integrity_key=key, integrity="sha256") == RFC8489_B1


@pytest.mark.parametrize(
    ("vector", "key", "sha256"),
    [
        (SAMPLE_REQUEST, SHORT_TERM_KEY, False),
        (SAMPLE_IPV4_RESPONSE, SHORT_TERM_KEY, False),
        (SAMPLE_IPV6_RESPONSE, SHORT_TERM_KEY, False),
        (SAMPLE_LONG_TERM_REQUEST, long_term_key(USERNAME, REALM, PASSWORD), False),
        (RFC8489_B1, long_term_key(USERNAME, REALM, PASSWORD, PasswordAlgorithm.SHA256), True),
    ],
    ids=["2.1-request", "2.2-ipv4", "2.3-ipv6", "2.4-long-term", "8489-B.1"],
)
def test_every_single_bit_flip_is_detected(vector: bytes, key: bytes, sha256: bool) -> None:
    assert _verifies(vector, key, sha256=sha256)
    accepted = [(i, b) for i, b, flipped in _flips(vector) if _verifies(flipped, key, sha256=sha256)]
    assert accepted == []


@pytest.mark.parametrize(
    "vector",
    [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE, SAMPLE_LONG_TERM_REQUEST, RFC8489_B1],
)
def test_vectors_through_the_stream_decoder(vector: bytes) -> None:
    whole = StreamDecoder()
    whole.receive_data(vector + vector[:7])
    assert whole.next_frame() == StunFrame(vector)
    assert whole.next_frame() is None
    assert whole.buffered_bytes == 7

    trickle = StreamDecoder()
    frames = []
    for byte in vector:
        trickle.receive_data(bytes([byte]))
        frame = trickle.next_frame()
        if frame is not None:
            frames.append(frame)
    assert frames == [StunFrame(vector)]
