"""HTTP/2 frame headers (RFC 9113 §4.1) for the link's hot path: the DATA frames of the link's
one stream are written and cut out here, around h2, because h2 spends about as much CPU on one
small DATA frame (frame objects, flag sets, two state machines, a repr for its trace log) as the
rest of a cross-node hop. Everything else — the preface, SETTINGS, HEADERS, trailers, PING,
WINDOW_UPDATE from the peer, RST_STREAM, GOAWAY, and every frame that is not plainly valid DATA
on the link's stream — still goes through h2 (`node.mesh._h2end` decides per frame).

The frames themselves are cut out of the received bytes by `H2End._frames`.
"""

from __future__ import annotations

import struct

HEAD = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, R + stream id (31 bits)
HEAD_BYTES = HEAD.size
_INCREMENT = struct.Struct(">I")

DATA = 0x0
HEADERS = 0x1
PUSH_PROMISE = 0x5
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
END_STREAM = 0x1
END_HEADERS = 0x4
PADDED = 0x8
_STREAM_MASK = 0x7FFFFFFF
_BLOCK_TYPES = (HEADERS, PUSH_PROMISE, CONTINUATION)


def data_head(length: int, stream_id: int) -> bytes:
    """The header of a DATA frame without flags (the payload follows)."""
    return HEAD.pack(length >> 16, length & 0xFFFF, DATA, 0, stream_id)


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame (RFC 9113 §6.9)."""
    return HEAD.pack(0, 4, WINDOW_UPDATE, 0, stream_id) + _INCREMENT.pack(increment)


def parse_head(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of the frame header at `pos` (9 bytes must be there)."""
    high, low, kind, flags, stream = HEAD.unpack_from(data, pos)
    return (high << 16) | low, kind, flags, stream & _STREAM_MASK


def opens_block(kind: int, flags: int) -> bool | None:
    """True: a header block goes on after this frame (no END_HEADERS); False: it ends here;
    None: the frame is not part of a header block."""
    if kind not in _BLOCK_TYPES:
        return None
    return not flags & END_HEADERS
