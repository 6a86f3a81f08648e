"""The peer-link codec: the hand-written frames path and every message against the generated code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.mesh import _peer_model as m
from node.mesh._peer_codec import (
    MERGE_MAX_BYTES,
    PeerDecodeError,
    decode,
    decode_at,
    encode,
    encode_batch,
)
from protos.gen.asgard import v1 as pb

MESSAGES = [
    m.Hello("asgard-mesh/1", "home", "node-a", b"n" * 32, "0.1", "127.0.0.1:1", "a"),
    m.Challenge("node-b", b"m" * 32, b"p" * 32, "0.1", "127.0.0.1:2", "b"),
    m.Proof(b"q" * 32),
    m.Ready(True, ""),
    m.Ready(False, "refused"),
    m.Ping(7),
    m.Pong(7),
    m.Frames((b"\x01\x10frame",), b"\x01"),
    m.Fanout(b"frame", 2, ("a", "b"), "a"),
    m.Digest((1, 2**64 - 1), 5),
    m.Versions((3,), (m.VersionData("device", "d1", 9, "node-a"),)),
    m.Records((m.RecordData("device", "d1", 9, "node-a", "node-a", False, '{"x":1}'),)),
    m.Handoff(4, "d1", (b"f1", b"f2")),
    m.HandoffAck(4),
    m.Housekeeping("node-a", 12, 1000),
    m.Goodbye("bye"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda x: type(x).__name__)
def test_every_message_round_trips(message: m.PeerMessage) -> None:
    assert decode(encode(message)) == message


@given(st.lists(st.binary(max_size=300), max_size=5), st.binary(max_size=5))
def test_frames_fast_path_matches_the_generated_code(frames: list[bytes], hops: bytes) -> None:
    message = m.Frames(tuple(frames), hops)
    ours = encode(message)
    generated = bytes(pb.PeerMessage(frames=pb.PeerFrames(frames=frames, hops=hops)))
    assert ours == generated
    assert decode(generated) == message


@given(st.lists(st.binary(max_size=300), max_size=5), st.binary(max_size=5), st.binary(max_size=8))
def test_a_message_is_decoded_in_place_between_other_bytes(
    frames: list[bytes], hops: bytes, around: bytes
) -> None:
    """`decode_at` reads one message out of a larger buffer (the received bytes) by offsets."""
    message = m.Frames(tuple(frames), hops)
    body = encode(message)
    data = around + body + around
    assert decode_at(data, len(around), len(around) + len(body)) == message


@pytest.mark.parametrize("data", [b"", b"\x3a\xff", b"\xff\xff\xff", b"\x3a\x05\x0a\x09"])
def test_garbage_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(PeerDecodeError):
        decode(data)


def _unbatch(data: bytes) -> list[m.PeerMessage]:
    out, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos + 1 : pos + 5], "big")
        out.append(decode(data[pos + 5 : pos + 5 + size]))
        pos += 5 + size
    return out


@given(st.lists(st.one_of(st.sampled_from(MESSAGES), st.binary(min_size=1, max_size=40_000)), max_size=40))
def test_a_batch_keeps_every_message_and_frame_in_order(items: list[m.PeerMessage | bytes]) -> None:
    messages = [m.Frames((x,), b"\x02") if isinstance(x, bytes) else x for x in items]
    batch = _unbatch(encode_batch(messages))
    flat = [(f, h) for x in batch if isinstance(x, m.Frames) for f, h in zip(x.frames, x.hops, strict=True)]
    want = [
        (f, h) for x in messages if isinstance(x, m.Frames) for f, h in zip(x.frames, x.hops, strict=True)
    ]
    assert flat == want  # consecutive frames merged, none lost or reordered
    assert [x for x in batch if not isinstance(x, m.Frames)] == [
        x for x in messages if not isinstance(x, m.Frames)
    ]
    assert all(sum(map(len, x.frames)) <= MERGE_MAX_BYTES for x in batch if isinstance(x, m.Frames))
