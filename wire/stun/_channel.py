"""ChannelData messages (RFC 8656 §12.4) and first-byte demultiplexing (RFC 7983 §7)."""

from __future__ import annotations

import struct
from enum import Enum

from wire._errors import EncodeError
from wire.stun._errors import StunDecodeError

CHANNEL_MIN = 0x4000  # RFC 8656 §12: 0x4000-0x4FFF are channel numbers
CHANNEL_MAX = 0x4FFF
CHANNEL_MAX_RFC5766 = 0x7FFF  # RFC 5766 §11 allowed up to 0x7FFF; coturn's clients still use it
CHANNEL_HEADER_BYTES = 4
_HEADER = struct.Struct("!HH")


class PacketKind(Enum):
    """What the first byte of a packet says it is (RFC 7983 §7)."""

    STUN = "stun"  # 0-3
    ZRTP = "zrtp"  # 16-19
    DTLS = "dtls"  # 20-63
    CHANNEL_DATA = "channel-data"  # 64-79
    RTP = "rtp"  # 128-191
    UNKNOWN = "unknown"  # anything else: drop


def classify_first_byte(first: int) -> PacketKind:
    """Demultiplex by the first byte as RFC 7983 §7 lays out."""
    if first <= 3:
        return PacketKind.STUN
    if 16 <= first <= 19:
        return PacketKind.ZRTP
    if 20 <= first <= 63:
        return PacketKind.DTLS
    if 64 <= first <= 79:
        return PacketKind.CHANNEL_DATA
    if 128 <= first <= 191:
        return PacketKind.RTP
    return PacketKind.UNKNOWN


def is_channel_number(number: int, max_channel: int = CHANNEL_MAX) -> bool:
    """Whether `number` is a valid TURN channel number (up to `max_channel`)."""
    return CHANNEL_MIN <= number <= max_channel


def encode_channel_data(
    channel: int, data: bytes, *, pad: bool = False, max_channel: int = CHANNEL_MAX
) -> bytes:
    """A ChannelData message; `pad` adds zero bytes to a multiple of four (required over TCP,
    RFC 8656 §12.5).

    Raises:
        EncodeError: the channel number or the data length is out of range.
    """
    if not is_channel_number(channel, max_channel) or len(data) > 0xFFFF:
        raise EncodeError("channel number or data length out of range")
    padding = b"\x00" * (-len(data) & 3) if pad else b""
    return _HEADER.pack(channel, len(data)) + data + padding


def decode_channel_data_untrusted(
    data: bytes | bytearray | memoryview, *, max_channel: int = CHANNEL_MAX
) -> tuple[int, bytes]:
    """(channel, application data) of one ChannelData datagram; bytes past the length (padding)
    are ignored (RFC 8656 §12.4).

    Raises:
        StunDecodeError: hint None (drop) if short, truncated or not a channel number.
    """
    if len(data) < CHANNEL_HEADER_BYTES:
        raise StunDecodeError("ChannelData shorter than its header")
    channel, length = _HEADER.unpack_from(data)
    if not is_channel_number(channel, max_channel):
        raise StunDecodeError("not a channel number")
    if CHANNEL_HEADER_BYTES + length > len(data):
        raise StunDecodeError("ChannelData shorter than its length field")
    return channel, bytes(data[CHANNEL_HEADER_BYTES : CHANNEL_HEADER_BYTES + length])
