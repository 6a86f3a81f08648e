"""STUN message codec: round trips, attribute order, unknown attributes, integrity rules, errors."""

from __future__ import annotations

import contextlib
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import DecodeError, EncodeError
from wire.stun import (
    KNOWN_ATTRIBUTES,
    AddressFamily,
    Attr,
    Attribute,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    SecurityFeature,
    StunDecodeError,
    decode_address_error_code_untrusted,
    decode_address_family_untrusted,
    decode_address_untrusted,
    decode_change_request_untrusted,
    decode_channel_number_untrusted,
    decode_error_code_untrusted,
    decode_even_port_untrusted,
    decode_icmp_untrusted,
    decode_message_untrusted,
    decode_password_algorithms_untrusted,
    decode_requested_transport_untrusted,
    decode_reservation_token_untrusted,
    decode_text_untrusted,
    decode_u32_untrusted,
    decode_unknown_attributes_untrusted,
    decode_xor_address_untrusted,
    encode_address,
    encode_address_error_code,
    encode_address_family,
    encode_change_request,
    encode_channel_number,
    encode_error_code,
    encode_even_port,
    encode_icmp,
    encode_message,
    encode_password_algorithms,
    encode_requested_transport,
    encode_u32,
    encode_unknown_attributes,
    encode_xor_address,
    is_stun_header,
    make_nonce,
    message_type,
    nonce_features,
    opaque_string,
    split_message_type,
    verify_message_integrity,
    verify_message_integrity_sha256,
)

INTEGRITY_TYPES = {Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT}

attribute_types = st.integers(0, 0xFFFF).filter(lambda t: t not in INTEGRITY_TYPES)
attributes = st.builds(Attribute, attribute_types, st.binary(max_size=64))
messages = st.builds(
    Message,
    st.integers(0, 0xFFF),
    st.integers(0, 3),
    st.binary(min_size=12, max_size=12),
    st.lists(attributes, max_size=8).map(tuple),
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(socket.AF_INET6, a.packed))
hosts = st.one_of(ipv4, ipv6)
ports = st.integers(0, 0xFFFF)


@given(messages)
def test_round_trip(message: Message) -> None:
    assert decode_message_untrusted(encode_message(message)) == message


@given(messages, st.binary(min_size=1, max_size=40), st.sampled_from(["sha1", "sha256", "both"]))
def test_round_trip_with_integrity_and_fingerprint(message: Message, key: bytes, kind: str) -> None:
    data = encode_message(message, integrity_key=key, integrity=kind, fingerprint=True)  # type: ignore[arg-type]
    decoded = decode_message_untrusted(data)
    assert decoded.attributes[: len(message.attributes)] == message.attributes
    assert decoded.attributes[-1].type == Attr.FINGERPRINT
    assert verify_message_integrity(decoded, key) == (kind in ("sha1", "both"))
    assert verify_message_integrity_sha256(decoded, key) == (kind in ("sha256", "both"))
    assert not verify_message_integrity(decoded, key + b"!")
    assert not verify_message_integrity_sha256(decoded, key + b"!")


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_message_untrusted(data)


@given(st.binary(max_size=120))
@settings(max_examples=500)
def test_random_bodies_behind_a_valid_header_raise_only_decode_error(body: bytes) -> None:
    body = body[: len(body) & ~3]
    data = struct.pack("!HHI", 0x0001, len(body), 0x2112A442) + bytes(12) + body
    try:
        message = decode_message_untrusted(data)
    except DecodeError:
        return
    verify_message_integrity(message, b"k")
    verify_message_integrity_sha256(message, b"k")


VALUE_DECODERS = [
    decode_address_untrusted,
    lambda v: decode_xor_address_untrusted(v, bytes(12)),
    decode_error_code_untrusted,
    decode_address_error_code_untrusted,
    decode_unknown_attributes_untrusted,
    decode_u32_untrusted,
    decode_channel_number_untrusted,
    decode_requested_transport_untrusted,
    decode_address_family_untrusted,
    decode_even_port_untrusted,
    decode_reservation_token_untrusted,
    decode_icmp_untrusted,
    decode_password_algorithms_untrusted,
    decode_change_request_untrusted,
    decode_text_untrusted,
]


@given(st.binary(max_size=40), st.sampled_from(range(len(VALUE_DECODERS))))
@settings(max_examples=800)
def test_attribute_decoders_raise_only_decode_error(value: bytes, which: int) -> None:
    hint = 400
    try:
        VALUE_DECODERS[which](value)
    except DecodeError as exc:
        hint = exc.hint
    assert hint == 400


@given(st.integers(0, 0xFFF), st.integers(0, 3))
def test_message_type_interleaving(method: int, cls: int) -> None:
    assert split_message_type(message_type(method, cls)) == (method, cls)
    assert message_type(method, cls) & 0xC000 == 0


def test_message_type_known_values() -> None:
    # RFC 8489 §6: Binding request 0x0001, success 0x0101, error 0x0111; RFC 8656 Send/Data ind.
    assert message_type(Method.BINDING, MessageClass.REQUEST) == 0x0001
    assert message_type(Method.BINDING, MessageClass.SUCCESS) == 0x0101
    assert message_type(Method.BINDING, MessageClass.ERROR) == 0x0111
    assert message_type(Method.SEND, MessageClass.INDICATION) == 0x0016
    assert message_type(Method.DATA, MessageClass.INDICATION) == 0x0017
    assert message_type(Method.ALLOCATE, MessageClass.ERROR) == 0x0113


@given(hosts, ports, st.binary(min_size=12, max_size=12))
def test_address_round_trips(host: str, port: int, tid: bytes) -> None:
    assert decode_address_untrusted(encode_address(host, port)) == (host, port)
    assert decode_xor_address_untrusted(encode_xor_address(host, port, tid), tid) == (host, port)


@given(st.integers(300, 699), st.text(max_size=40))
def test_error_code_round_trip(code: int, reason: str) -> None:
    assert decode_error_code_untrusted(encode_error_code(code, reason)) == (code, reason)
    family = AddressFamily.IPV6
    assert decode_address_error_code_untrusted(encode_address_error_code(family, code, reason)) == (
        family, code, reason,
    )  # fmt: skip


def test_error_code_default_reason_and_range() -> None:
    assert decode_error_code_untrusted(encode_error_code(438)) == (438, "Stale Nonce")
    with pytest.raises(EncodeError):
        encode_error_code(200)


@given(st.lists(st.integers(0, 0xFFFF), max_size=10))
def test_unknown_attributes_round_trip(types: list[int]) -> None:
    assert decode_unknown_attributes_untrusted(encode_unknown_attributes(types)) == tuple(types)


@given(
    st.integers(0, 0xFFFFFFFF),
    st.integers(0x4000, 0x4FFF),
    st.booleans(),
    st.integers(0, 0x7F),
    st.integers(0, 0x1FF),
)
def test_small_value_round_trips(number: int, channel: int, flag: bool, itype: int, icode: int) -> None:
    assert decode_u32_untrusted(encode_u32(number)) == number
    assert decode_channel_number_untrusted(encode_channel_number(channel)) == channel
    assert decode_even_port_untrusted(encode_even_port(flag)) is flag
    assert decode_icmp_untrusted(encode_icmp(itype, icode, number)) == (itype, icode, number)
    assert decode_requested_transport_untrusted(encode_requested_transport(17)) == 17
    assert decode_address_family_untrusted(encode_address_family(2)) == 2
    assert decode_change_request_untrusted(encode_change_request(0x6)) == 0x6


def test_password_algorithms_round_trip_with_parameters() -> None:
    entries = [(PasswordAlgorithm.SHA256, b""), (PasswordAlgorithm.MD5, b""), (7, b"abc")]
    assert decode_password_algorithms_untrusted(encode_password_algorithms(entries)) == entries


def test_attributes_keep_their_order_and_unknown_ones_are_kept() -> None:
    attrs = (
        Attribute(0x7F01, b"unknown-required"),
        Attribute(Attr.LIFETIME, encode_u32(600)),
        Attribute(0xC001, b"unknown-optional"),
        Attribute(Attr.LIFETIME, encode_u32(1)),
    )
    message = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12), attrs)
    decoded = decode_message_untrusted(encode_message(message))
    assert decoded.attributes == attrs
    assert decoded.get(Attr.LIFETIME) == encode_u32(600)  # the first one counts
    assert decoded.get_all(Attr.LIFETIME) == [encode_u32(600), encode_u32(1)]
    assert decoded.unknown_comprehension_required() == (0x7F01,)
    understood = KNOWN_ATTRIBUTES - {Attr.LIFETIME}
    assert decoded.unknown_comprehension_required(understood) == (0x7F01, Attr.LIFETIME)


def test_attributes_after_integrity_are_ignored_except_sha256_and_fingerprint() -> None:
    tid = os.urandom(12)
    key = b"key"
    signed = encode_message(
        Message(Method.REFRESH, MessageClass.REQUEST, tid, (Attribute(Attr.LIFETIME, encode_u32(0)),)),
        integrity_key=key,
    )
    extra = struct.pack("!HH", Attr.DATA, 4) + b"evil"
    tampered = bytearray(signed + extra)
    struct.pack_into("!H", tampered, 2, len(tampered) - 20)
    decoded = decode_message_untrusted(bytes(tampered))
    assert decoded.get(Attr.DATA) is None
    assert verify_message_integrity(decoded, key)


def test_fingerprint_must_be_last_and_must_match() -> None:
    message = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    data = bytearray(encode_message(message, fingerprint=True))
    data[-1] ^= 1
    with pytest.raises(StunDecodeError) as info:
        decode_message_untrusted(bytes(data))
    assert info.value.hint is None


def test_bad_integrity_size_in_a_request_is_a_400() -> None:
    tid = os.urandom(12)
    data = encode_message(
        Message(Method.ALLOCATE, MessageClass.REQUEST, tid, (Attribute(Attr.MESSAGE_INTEGRITY, b"short"),))
    )
    with pytest.raises(StunDecodeError) as info:
        decode_message_untrusted(data)
    assert (info.value.hint, info.value.transaction_id, info.value.method) == (400, tid, Method.ALLOCATE)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:19],
        lambda b: b[:-1],
        lambda b: bytes([b[0] | 0x80]) + b[1:],
        lambda b: b[:4] + b"\x00\x00\x00\x00" + b[8:],
        lambda b: b[:2] + struct.pack("!H", len(b) - 16) + b[4:],
        lambda b: b + b"trailing",
    ],
    ids=["short", "truncated", "top-bits", "cookie", "length", "trailing"],
)
def test_malformed_headers_are_dropped(mutate) -> None:
    good = encode_message(
        Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12), (Attribute(Attr.SOFTWARE, b"abc"),))
    )
    with pytest.raises(StunDecodeError) as info:
        decode_message_untrusted(mutate(good))
    assert info.value.hint is None


def test_encode_refuses_out_of_range_fields() -> None:
    with pytest.raises(EncodeError):
        encode_message(Message(1, 0, b"short"))
    with pytest.raises(EncodeError):
        encode_message(Message(0x1000, 0, bytes(12)))
    with pytest.raises(EncodeError):
        encode_message(Message(1, 0, bytes(12), (Attribute(Attr.DATA, bytes(0x10000)),)))


def test_nonce_cookie_carries_the_feature_bits() -> None:
    features = SecurityFeature.PASSWORD_ALGORITHMS | SecurityFeature.USERNAME_ANONYMITY
    nonce = make_nonce(features, "opaque")
    assert nonce.startswith("obMatJos2AAAD")
    assert nonce_features(nonce.encode()) == features
    assert nonce_features(b"plain-nonce") is None
    assert nonce_features(b"obMatJos2!!") is None


def test_opaque_string_maps_spaces_and_normalises() -> None:
    assert opaque_string("a\u00a0b") == "a b"
    assert opaque_string("e\u0301") == "\u00e9"
    with pytest.raises(ValueError, match="control"):
        opaque_string("a\x07")
    with pytest.raises(ValueError, match="empty"):
        opaque_string("")


def test_is_stun_header() -> None:
    data = encode_message(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)))
    assert is_stun_header(data)
    assert not is_stun_header(data[:19])
    assert not is_stun_header(b"\x40" + data[1:])
    assert not is_stun_header(data[:4] + b"\x00\x00\x00\x00" + data[8:])
