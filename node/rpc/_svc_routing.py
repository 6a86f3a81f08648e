"""asgard.v1.Routing and asgard.v1.Capabilities on the island.

Frames are opaque bytes here: the very bytes object parsed out of the gRPC message is handed to
the node, which reads the device frame header itself (docs/protocol.md) and routes it.
"""

from __future__ import annotations

from grpclib.const import Cardinality

from node.errors import InvalidInput
from node.rpc import _convert as cv
from node.rpc import model
from node.rpc._gate import CallContext, Method, Stream
from node.rpc._streams import bidirectional, pump_out, request
from node.rpc.backend import RpcBackend
from protos.gen.asgard import v1 as pb

ROUTING = "asgard.v1.Routing"
CAPABILITIES = "asgard.v1.Capabilities"


class RoutingService:
    """Send and Connect."""

    def __init__(self, backend: RpcBackend) -> None:
        self._backend = backend

    def methods(self) -> list[Method]:
        """The methods, for the gate."""
        return [
            Method(f"/{ROUTING}/Send", self.send, Cardinality.UNARY_UNARY,
                   pb.SendRequest, pb.SendAck),
            Method(f"/{ROUTING}/Connect", self.connect, Cardinality.STREAM_STREAM,
                   pb.ConnectFrame, pb.ConnectFrame),
        ]  # fmt: skip

    async def send(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.SendRequest = await request(stream)
        if not req.frame:
            raise InvalidInput("frame is empty", field="frame")
        ack = await ctx.call(self._backend.send, req.frame)
        await stream.send_message(
            pb.SendAck(
                message_id=ack.message_id,
                status=cv.DELIVERY_STATUS[ack.status],
                recipients=ack.recipients,
            )
        )

    async def connect(self, stream: Stream, ctx: CallContext) -> None:
        call = ctx.open_stream(self._backend.connect, bidirectional=True)
        await bidirectional(stream, call, _frame_in, _frame_out)


def _frame_in(message: pb.ConnectFrame) -> bytes:
    frame: bytes = message.frame
    return frame


def _frame_out(frame: bytes) -> pb.ConnectFrame:
    return pb.ConnectFrame(frame=frame)


class CapabilitiesService:
    """GetCapabilities and WatchCapabilities."""

    def __init__(self, backend: RpcBackend) -> None:
        self._backend = backend

    def methods(self) -> list[Method]:
        """The methods, for the gate."""
        return [
            Method(f"/{CAPABILITIES}/GetCapabilities", self.get_capabilities,
                   Cardinality.UNARY_UNARY, pb.GetCapabilitiesRequest, pb.NodeCapabilities),
            Method(f"/{CAPABILITIES}/WatchCapabilities", self.watch_capabilities,
                   Cardinality.UNARY_STREAM, pb.WatchCapabilitiesRequest, pb.NodeCapabilities),
        ]  # fmt: skip

    async def get_capabilities(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.GetCapabilitiesRequest = await request(stream)
        network_id = cv.optional_uuid(req.network_id, "network_id")
        snapshot = await ctx.call(self._backend.capabilities, network_id)
        await stream.send_message(node_capabilities(snapshot))

    async def watch_capabilities(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.WatchCapabilitiesRequest = await request(stream)
        network_id = cv.optional_uuid(req.network_id, "network_id")
        call = ctx.open_stream(self._backend.watch_capabilities, network_id, bidirectional=False)
        await pump_out(stream, call, node_capabilities)


def node_capabilities(snapshot: model.CapabilitySnapshot) -> pb.NodeCapabilities:
    """A capability snapshot as a message."""
    return pb.NodeCapabilities(
        node_id=snapshot.node_id,
        version=snapshot.version,
        services=[
            pb.ServiceInfo(name=s.name, state=cv.SERVICE_STATE[s.state], detail=s.detail, address=s.address)
            for s in snapshot.services
        ],
        capabilities=[
            pb.Capability(name=c.name, local=c.local, online_devices=c.online_devices, devices=c.devices)
            for c in sorted(snapshot.capabilities, key=lambda c: c.name)
        ],
        as_of=cv.timestamp(snapshot.as_of),
        revision=snapshot.revision,
    )
