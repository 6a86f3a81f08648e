"""Framing of STUN and ChannelData over a byte stream (TURN over TCP, RFC 8656 §12.5).

Over TCP a ChannelData message is padded to a multiple of four bytes; STUN messages are
self-delimiting. The decoder copes with partial reads and with several frames in one read, and
refuses frames over `max_frame_bytes` so a peer cannot make it buffer without bound.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wire.stun._channel import CHANNEL_MAX, CHANNEL_MIN
from wire.stun._constants import HEADER_BYTES, MAGIC_COOKIE, MAX_MESSAGE_BYTES
from wire.stun._errors import StunDecodeError

_HEAD = struct.Struct("!HH")
_COOKIE = struct.Struct("!I")
_COMPACT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class StunFrame:
    """One whole STUN message, still to be decoded."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ChannelDataFrame:
    """One ChannelData message: channel number and application data (padding removed)."""

    channel: int
    data: bytes


Frame = StunFrame | ChannelDataFrame


class StreamDecoder:
    """Turns stream bytes into frames: feed `receive_data`, then call `next_frame` until None."""

    def __init__(
        self, *, max_frame_bytes: int = MAX_MESSAGE_BYTES, padded: bool = True, max_channel: int = CHANNEL_MAX
    ) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_frame = max_frame_bytes
        self._max_buffer = max_frame_bytes + _COMPACT_BYTES
        self._padded = padded
        self._max_first = max_channel >> 8

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append stream bytes.

        Raises:
            StunDecodeError: (hint None) more is buffered than one frame may need.
        """
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        if self.buffered_bytes > self._max_buffer:
            raise StunDecodeError("stream buffer limit exceeded")

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None when more bytes are needed.

        Raises:
            StunDecodeError: (hint None) the stream holds something that is neither STUN nor
                ChannelData, or a frame over the size limit; the connection should be closed.
        """
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < 4:
            return None
        first = buf[pos]
        if first < 0x40:
            return self._stun_frame(buf, pos, available)
        if CHANNEL_MIN >> 8 <= first <= self._max_first:
            return self._channel_frame(buf, pos, available)
        raise StunDecodeError("stream holds neither STUN nor ChannelData")

    def _stun_frame(self, buf: bytearray, pos: int, available: int) -> StunFrame | None:
        length = _HEAD.unpack_from(buf, pos)[1]
        total = HEADER_BYTES + length
        if length & 3 or total > self._max_frame:
            raise StunDecodeError("bad or oversized STUN length on the stream")
        if available >= 8 and _COOKIE.unpack_from(buf, pos + 4)[0] != MAGIC_COOKIE:
            raise StunDecodeError("no magic cookie on the stream")
        if available < total:
            return None
        self._pos = pos + total
        return StunFrame(bytes(buf[pos : pos + total]))

    def _channel_frame(self, buf: bytearray, pos: int, available: int) -> ChannelDataFrame | None:
        channel, length = _HEAD.unpack_from(buf, pos)
        total = 4 + length + ((-length & 3) if self._padded else 0)
        if 4 + length > self._max_frame:
            raise StunDecodeError("oversized ChannelData on the stream")
        if available < total:
            return None
        self._pos = pos + total
        return ChannelDataFrame(channel, bytes(buf[pos + 4 : pos + 4 + length]))
