"""asgard.v1.Registry on the island: convert, hand to the node's `RpcBackend`, convert back."""

from __future__ import annotations

from grpclib.const import Cardinality

from node.errors import InvalidInput
from node.rpc import _convert as cv
from node.rpc import model
from node.rpc._gate import CallContext, Method, Stream
from node.rpc._streams import pump_out, request
from node.rpc.backend import RpcBackend
from protos.gen.asgard import v1 as pb

SERVICE = "asgard.v1.Registry"


class RegistryService:
    """The device registry's gRPC methods."""

    def __init__(self, backend: RpcBackend) -> None:
        self._backend = backend

    def methods(self) -> list[Method]:
        """The methods, for the gate."""
        unary = Cardinality.UNARY_UNARY
        return [
            Method(f"/{SERVICE}/RegisterDevice", self.register_device, unary,
                   pb.RegisterDeviceRequest, pb.RegisterDeviceResponse),
            Method(f"/{SERVICE}/GetDevice", self.get_device, unary, pb.GetDeviceRequest, pb.Device),
            Method(f"/{SERVICE}/ListDevices", self.list_devices, unary,
                   pb.ListDevicesRequest, pb.ListDevicesResponse),
            Method(f"/{SERVICE}/UpdateDevice", self.update_device, unary,
                   pb.UpdateDeviceRequest, pb.Device),
            Method(f"/{SERVICE}/UnregisterDevice", self.unregister_device, unary,
                   pb.UnregisterDeviceRequest, pb.UnregisterDeviceResponse),
            Method(f"/{SERVICE}/Heartbeat", self.heartbeat, unary,
                   pb.HeartbeatRequest, pb.HeartbeatResponse),
            Method(f"/{SERVICE}/Discover", self.discover, unary,
                   pb.DiscoverRequest, pb.DiscoverResponse),
            Method(f"/{SERVICE}/WatchStatus", self.watch_status, Cardinality.UNARY_STREAM,
                   pb.WatchStatusRequest, pb.DeviceStatusEvent),
        ]  # fmt: skip

    async def register_device(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.RegisterDeviceRequest = await request(stream)
        registration = model.DeviceRegistration(
            device_id=cv.optional_uuid(req.device_id, "device_id"),
            network_id=cv.check_uuid(req.network_id, "network_id"),
            world_type=req.world_type,
            capabilities=tuple(req.capabilities),
            hardware_spec=cv.json_object(req.hardware_spec_json, "hardware_spec_json"),
            networks=cv.uuids(req.networks, "networks"),
            name=req.name,
        )
        result = await ctx.call(self._backend.register_device, registration)
        await stream.send_message(
            pb.RegisterDeviceResponse(device=cv.device(result.device), created=result.created)
        )

    async def get_device(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.GetDeviceRequest = await request(stream)
        device_id = cv.check_uuid(req.device_id, "device_id")
        record = await ctx.call(self._backend.get_device, device_id)
        await stream.send_message(cv.device(record))

    async def list_devices(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.ListDevicesRequest = await request(stream)
        status = None
        if req.status != pb.DeviceStatus.UNSPECIFIED:
            status = cv.enum_name(cv.DEVICE_STATUS_NAME, req.status, "status")
        query = model.DeviceQuery(
            network_id=cv.optional_uuid(req.network_id, "network_id"),
            world_type=req.world_type or None,
            status=status,
            capability=req.capability or None,
            page_size=cv.positive_or_none(req.page_size),
            page_token=req.page_token or None,
        )
        page = await ctx.call(self._backend.list_devices, query)
        await stream.send_message(
            pb.ListDevicesResponse(
                devices=[cv.device(d) for d in page.devices],
                next_page_token=page.next_page_token or "",
            )
        )

    async def update_device(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.UpdateDeviceRequest = await request(stream)
        spec = req.hardware_spec_json
        update = model.DeviceUpdate(
            device_id=cv.check_uuid(req.device_id, "device_id"),
            network_id=None if req.network_id is None else cv.check_uuid(req.network_id, "network_id"),
            world_type=req.world_type,
            capabilities=None if req.capabilities is None else tuple(req.capabilities.values),
            hardware_spec=None if spec is None else cv.json_object(spec, "hardware_spec_json"),
            networks=None if req.networks is None else cv.uuids(req.networks.values, "networks"),
            name=req.name,
        )
        record = await ctx.call(self._backend.update_device, update)
        await stream.send_message(cv.device(record))

    async def unregister_device(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.UnregisterDeviceRequest = await request(stream)
        device_id = cv.check_uuid(req.device_id, "device_id")
        removed = await ctx.call(self._backend.unregister_device, device_id)
        await stream.send_message(pb.UnregisterDeviceResponse(removed=removed))

    async def heartbeat(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.HeartbeatRequest = await request(stream)
        device_id = cv.check_uuid(req.device_id, "device_id")
        result = await ctx.call(self._backend.heartbeat, device_id)
        await stream.send_message(
            pb.HeartbeatResponse(
                status=cv.DEVICE_STATUS[result.status],
                last_seen=cv.timestamp(result.last_seen),
                next_heartbeat_ms=round(result.next_heartbeat_s * 1000),
            )
        )

    async def discover(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.DiscoverRequest = await request(stream)
        if not req.capabilities:
            raise InvalidInput("at least one capability is required", field="capabilities")
        query = model.DiscoverQuery(
            capabilities=tuple(req.capabilities),
            network_id=cv.optional_uuid(req.network_id, "network_id"),
            include_offline=req.include_offline,
            limit=cv.positive_or_none(req.limit),
        )
        devices = await ctx.call(self._backend.discover, query)
        await stream.send_message(pb.DiscoverResponse(devices=[cv.device(d) for d in devices]))

    async def watch_status(self, stream: Stream, ctx: CallContext) -> None:
        req: pb.WatchStatusRequest = await request(stream)
        query = model.StatusWatch(
            network_id=cv.optional_uuid(req.network_id, "network_id"),
            device_ids=cv.uuids(req.device_ids, "device_ids"),
            send_initial=req.send_initial,
        )
        call = ctx.open_stream(self._backend.watch_status, query, bidirectional=False)
        await pump_out(stream, call, _status_event)


def _status_event(event: model.StatusEvent) -> pb.DeviceStatusEvent:
    return pb.DeviceStatusEvent(
        device_id=event.device_id,
        network_id=event.network_id,
        status=cv.DEVICE_STATUS[event.status],
        previous=pb.DeviceStatus.UNSPECIFIED if event.previous is None else cv.DEVICE_STATUS[event.previous],
        at=cv.timestamp(event.at),
    )
