"""STUN (RFC 8489), TURN (RFC 8656) and NAT behaviour discovery (RFC 5780) code points."""

from __future__ import annotations

from enum import IntEnum, IntFlag

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_BYTES = 20
TRANSACTION_ID_BYTES = 12
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7: CRC-32 XOR "STUN"
MAX_MESSAGE_BYTES = HEADER_BYTES + 0xFFFF
COMPREHENSION_OPTIONAL_MIN = 0x8000  # RFC 8489 §14: 0x0000-0x7FFF comprehension-required


class Method(IntEnum):
    """STUN methods (RFC 8489 §18.2, RFC 8656 §17)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class MessageClass(IntEnum):
    """The two class bits C1 C0 (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Attr(IntEnum):
    """Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 5780 §7, RFC 8445 §16.1)."""

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    CACHE_TIMEOUT = 0x8027
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


KNOWN_ATTRIBUTES = frozenset(int(a) for a in Attr)


class AddressFamily(IntEnum):
    """Address family codes of (XOR-)MAPPED-ADDRESS and REQUESTED-ADDRESS-FAMILY."""

    IPV4 = 0x01
    IPV6 = 0x02


class PasswordAlgorithm(IntEnum):
    """RFC 8489 §18.5."""

    MD5 = 0x0001
    SHA256 = 0x0002


class SecurityFeature(IntFlag):
    """Security feature bits carried in the nonce cookie (RFC 8489 §18.1; bit 0 is the least
    significant, as erratum 6290 and the Appendix B.1 vector show)."""

    PASSWORD_ALGORITHMS = 1 << 0
    USERNAME_ANONYMITY = 1 << 1


class ChangeRequest(IntFlag):
    """CHANGE-REQUEST flags (RFC 5780 §7.2)."""

    PORT = 0x2
    IP = 0x4


TRANSPORT_UDP = 17  # REQUESTED-TRANSPORT protocol numbers (RFC 8656 §18.7)
TRANSPORT_TCP = 6

ERROR_REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    405: "Mobility Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}
