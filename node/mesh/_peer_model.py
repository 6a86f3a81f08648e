"""The messages of a mesh peer link (`asgard.v1.Mesh/Link`) as plain records for the Trio side.

The link's connection code (`node.mesh._h2end`) encodes and decodes them with `_peer_codec`; every
class derives from `PeerMessage`, whose `SerializeToString` / `FromString` are the protobuf wire
format of `protos/asgard/v1/mesh.proto` (the interface of grpclib's codec, which the tests' gRPC
clients use), so no conversion step runs between the stream and the node, and `node.mesh` never
sees generated code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from store.mesh import Row


class PeerMessage:
    """Base of every link message; protobuf codecs (grpclib's) call these two methods."""

    __slots__ = ()

    def SerializeToString(self) -> bytes:
        from node.mesh._peer_codec import encode

        return encode(self)

    @classmethod
    def FromString(cls, data: bytes) -> PeerMessage:
        from node.mesh._peer_codec import decode

        return decode(data)


@dataclass(frozen=True, slots=True)
class Hello(PeerMessage):
    protocol: str
    cluster_id: str
    node_id: str
    nonce: bytes
    version: str
    address: str
    node_name: str


@dataclass(frozen=True, slots=True)
class Challenge(PeerMessage):
    node_id: str
    nonce: bytes
    proof: bytes
    version: str
    address: str
    node_name: str


@dataclass(frozen=True, slots=True)
class Proof(PeerMessage):
    proof: bytes


@dataclass(frozen=True, slots=True)
class Ready(PeerMessage):
    accepted: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ping(PeerMessage):
    id: int


@dataclass(frozen=True, slots=True)
class Pong(PeerMessage):
    id: int


@dataclass(frozen=True, slots=True)
class Frames(PeerMessage):
    """Device frames for the receiver's devices; `hops[i]` belongs to `frames[i]`."""

    frames: tuple[bytes, ...]
    hops: bytes


@dataclass(frozen=True, slots=True)
class Fanout(PeerMessage):
    frame: bytes
    hops: int
    covered: tuple[str, ...]
    origin: str


@dataclass(frozen=True, slots=True)
class Digest(PeerMessage):
    buckets: tuple[int, ...]
    records: int


class VersionData(NamedTuple):
    kind: str
    id: str
    hlc: int
    node: str


@dataclass(frozen=True, slots=True)
class Versions(PeerMessage):
    buckets: tuple[int, ...]
    versions: tuple[VersionData, ...]


RecordData = Row
"""One replicated record: the store's row, sent as it is read and stored as it arrives."""


@dataclass(frozen=True, slots=True)
class Records(PeerMessage):
    records: tuple[RecordData, ...]


@dataclass(frozen=True, slots=True)
class Handoff(PeerMessage):
    batch: int
    device_id: str
    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class HandoffAck(PeerMessage):
    batch: int


@dataclass(frozen=True, slots=True)
class Housekeeping(PeerMessage):
    leader_id: str
    term: int
    tombstone_horizon_ms: int


@dataclass(frozen=True, slots=True)
class Goodbye(PeerMessage):
    reason: str
