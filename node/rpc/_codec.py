"""The router's message codec: grpclib's ProtoCodec with direct paths for the routing messages.

`ConnectFrame` and `SendRequest` are `{ bytes frame = 1; }` and `SendAck` is three varints
(routing.proto). They cross the island once per Connect message and per Send call, and
betterproto2 spends ~6 µs decoding and 6-17 µs encoding each (dataclass machinery, a
`warnings.catch_warnings` per default value), more than the island's own work on them. So:

* encoding writes the protobuf wire format directly (protobuf encoding guide: a tag is
  `field_number << 3 | wire_type` as a varint; proto3 leaves out fields holding the default);
* decoding takes the direct path only for the canonical form, a single field 1 of wire type 2
  whose length covers the rest of the message exactly; anything else (unknown fields, a
  repeated field, an empty message, a malformed one) goes to betterproto2 unchanged, so
  untrusted input is judged exactly as before.

Every other message type goes to ProtoCodec.
"""

from __future__ import annotations

from typing import Any

from grpclib.encoding.proto import ProtoCodec

from protos.gen.asgard import v1 as pb
from wire.varint import VarintError, decode_varint, encode_varint

_FRAME_TAG = 0x0A  # field 1, wire type 2 (length-delimited)


def encode_frame_message(frame: bytes) -> bytes:
    """`{ bytes frame = 1; }` on the wire (empty when `frame` is)."""
    if not frame:
        return b""
    return b"\x0a" + encode_varint(len(frame)) + frame


def decode_frame_message_canonical(data: bytes) -> bytes | None:
    """The `frame` of a canonical `{ bytes frame = 1; }` message, or None for any other form."""
    if len(data) < 2 or data[0] != _FRAME_TAG:
        return None
    try:
        length, start = decode_varint(data, 1, len(data))
    except VarintError:
        return None
    return data[start:] if start + length == len(data) else None


def encode_send_ack(ack: pb.SendAck) -> bytes:
    """SendAck on the wire: message_id (1), status (2), recipients (3), each a varint."""
    out = b""
    if ack.message_id:
        out += b"\x08" + encode_varint(ack.message_id)
    if ack.status:
        out += b"\x10" + encode_varint(int(ack.status))
    if ack.recipients:
        out += b"\x18" + encode_varint(ack.recipients)
    return out


class RouterCodec(ProtoCodec):
    """ProtoCodec with the direct paths above (see the module docstring)."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if message_type is pb.ConnectFrame and type(message) is pb.ConnectFrame:
            return encode_frame_message(message.frame)
        if message_type is pb.SendAck and type(message) is pb.SendAck:
            return encode_send_ack(message)
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if (message_type is pb.ConnectFrame or message_type is pb.SendRequest) and type(data) is bytes:
            frame = decode_frame_message_canonical(data)
            if frame is not None:
                return message_type(frame=frame)
        return super().decode(data, message_type)
