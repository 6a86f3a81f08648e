"""/api/v1/devices, /api/v1/networks and /api/v1/connections."""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import document_response, tag, validate_querystring, validate_request, validate_response

from node.api._common import cursor, no_content, page_limit, problems
from node.api._schemas import (
    ConnectionIn,
    ConnectionOut,
    ConnectionPage,
    ConnectionQuery,
    DeleteNetworkOut,
    DeleteNetworkQuery,
    DeviceIn,
    DeviceOut,
    DevicePage,
    DevicePatchIn,
    DevicePut,
    DeviceQuery,
    MemberIn,
    NetworkIn,
    NetworkOut,
    NetworkPage,
    NetworkPatch,
    NoContent,
    PageQuery,
    TopologyOut,
)
from node.api._security import ctx, principal
from node.registry import DevicePatch, DeviceSpec
from store.registry import DeviceFilter

bp = Blueprint("registry", __name__, url_prefix="/api/v1")


# ---------------------------------------------------------------- devices


@bp.get("/devices")
@tag(["devices"])
@problems()
@validate_querystring(DeviceQuery)
@validate_response(DevicePage)
async def list_devices(query_args: DeviceQuery) -> DevicePage:
    """List devices visible to the caller, filtered and paginated (ordered by id)."""
    flt = DeviceFilter(
        network_id=query_args.network_id.lower() if query_args.network_id else None,
        world_type=query_args.world_type,
        status=query_args.status,
        capability=query_args.capability,
    )
    items, nxt = ctx().registry.list_devices(
        principal(), flt, after=cursor(query_args.cursor), limit=page_limit(query_args.limit)
    )
    return DevicePage(items=[DeviceOut.of(d) for d in items], next_cursor=nxt)


@bp.post("/devices")
@tag(["devices"])
@problems(409)
@document_response(DeviceOut, 200)
@validate_request(DeviceIn)
@validate_response(DeviceOut, 201)
async def register_device(data: DeviceIn) -> tuple[DeviceOut, int, dict[str, str]]:
    """Register a device (201), or re-register it (200: metadata updated, registered_at kept)."""
    spec = DeviceSpec(
        device_id=data.device_id,
        network_id=data.network_id,
        world_type=data.world_type,
        name=data.name,
        capabilities=tuple(data.capabilities),
        hardware_spec=data.hardware_spec,
    )
    device, created = await ctx().registry.register_device(principal(), spec, move=data.move)
    return DeviceOut.of(device), 201 if created else 200, {"Location": f"/api/v1/devices/{device.device_id}"}


@bp.get("/devices/<device_id>")
@tag(["devices"])
@problems()
@validate_response(DeviceOut)
async def get_device(device_id: str) -> DeviceOut:
    """One device."""
    return DeviceOut.of(ctx().registry.get_device(principal(), device_id))


@bp.put("/devices/<device_id>")
@tag(["devices"])
@problems()
@validate_request(DevicePut)
@validate_response(DeviceOut)
async def put_device(device_id: str, data: DevicePut) -> DeviceOut:
    """Replace a device's metadata and capabilities."""
    patch = DevicePatch(
        name=data.name,
        world_type=data.world_type,
        capabilities=tuple(data.capabilities),
        hardware_spec=data.hardware_spec,
    )
    return DeviceOut.of(await ctx().registry.update_device(principal(), device_id, patch))


@bp.patch("/devices/<device_id>")
@tag(["devices"])
@problems()
@validate_request(DevicePatchIn)
@validate_response(DeviceOut)
async def patch_device(device_id: str, data: DevicePatchIn) -> DeviceOut:
    """Change some of a device's metadata."""
    patch = DevicePatch(
        name=data.name,
        world_type=data.world_type,
        capabilities=None if data.capabilities is None else tuple(data.capabilities),
        hardware_spec=data.hardware_spec,
    )
    return DeviceOut.of(await ctx().registry.update_device(principal(), device_id, patch))


@bp.delete("/devices/<device_id>")
@tag(["devices"])
@problems()
@document_response(NoContent, 204)
async def delete_device(device_id: str) -> Response:
    """Unregister a device."""
    await ctx().registry.unregister_device(principal(), device_id)
    return no_content()


@bp.post("/devices/<device_id>/heartbeat")
@tag(["devices"])
@problems()
@validate_response(DeviceOut)
async def heartbeat_device(device_id: str) -> DeviceOut:
    """Record a heartbeat: last_seen moves and the device is online."""
    return DeviceOut.of(await ctx().registry.heartbeat(principal(), device_id))


# ---------------------------------------------------------------- networks


@bp.get("/networks")
@tag(["networks"])
@problems()
@validate_querystring(PageQuery)
@validate_response(NetworkPage)
async def list_networks(query_args: PageQuery) -> NetworkPage:
    """List networks visible to the caller."""
    items, nxt = ctx().registry.list_networks(
        principal(), after=cursor(query_args.cursor), limit=page_limit(query_args.limit)
    )
    return NetworkPage(items=[NetworkOut.of(n) for n in items], next_cursor=nxt)


@bp.post("/networks")
@tag(["networks"])
@problems(409)
@validate_request(NetworkIn)
@validate_response(NetworkOut, 201)
async def create_network(data: NetworkIn) -> tuple[NetworkOut, int, dict[str, str]]:
    """Create a network (its UUID is generated)."""
    net = await ctx().registry.create_network(principal(), data.name, owner_device_id=data.owner_device_id)
    return NetworkOut.of(net), 201, {"Location": f"/api/v1/networks/{net.network_id}"}


@bp.get("/networks/<network_id>")
@tag(["networks"])
@problems()
@validate_response(NetworkOut)
async def get_network(network_id: str) -> NetworkOut:
    """One network."""
    return NetworkOut.of(ctx().registry.get_network(principal(), network_id))


@bp.put("/networks/<network_id>")
@tag(["networks"])
@problems()
@validate_request(NetworkIn)
@validate_response(NetworkOut)
async def put_network(network_id: str, data: NetworkIn) -> NetworkOut:
    """Replace a network's name and owner."""
    net = await ctx().registry.update_network(
        principal(),
        network_id,
        name=data.name,
        owner_device_id=data.owner_device_id,
        clear_owner=data.owner_device_id is None,
    )
    return NetworkOut.of(net)


@bp.patch("/networks/<network_id>")
@tag(["networks"])
@problems()
@validate_request(NetworkPatch)
@validate_response(NetworkOut)
async def patch_network(network_id: str, data: NetworkPatch) -> NetworkOut:
    """Rename a network or change its owner."""
    clear = "owner_device_id" in data.model_fields_set and data.owner_device_id is None
    net = await ctx().registry.update_network(
        principal(), network_id, name=data.name, owner_device_id=data.owner_device_id, clear_owner=clear
    )
    return NetworkOut.of(net)


@bp.delete("/networks/<network_id>")
@tag(["networks"])
@problems(409)
@validate_querystring(DeleteNetworkQuery)
@validate_response(DeleteNetworkOut)
async def delete_network(network_id: str, query_args: DeleteNetworkQuery) -> DeleteNetworkOut:
    """Delete a network; refused (409) while devices remain unless force=true."""
    removed = await ctx().registry.delete_network(principal(), network_id, force=query_args.force)
    return DeleteNetworkOut(network_id=network_id.lower(), unregistered_devices=removed)


@bp.get("/networks/<network_id>/topology")
@tag(["networks"])
@problems()
@validate_response(TopologyOut)
async def topology(network_id: str) -> TopologyOut:
    """The devices of a network and their open connections."""
    topo = ctx().registry.topology(principal(), network_id, limit=ctx().settings.api.page_size_max)
    return TopologyOut(
        network=NetworkOut.of(topo.network),
        devices=[DeviceOut.of(d) for d in topo.devices],
        connections=[ConnectionOut.of(c) for c in topo.connections],
    )


@bp.post("/networks/<network_id>/members")
@tag(["networks"])
@problems()
@validate_request(MemberIn)
@validate_response(DeviceOut)
async def add_member(network_id: str, data: MemberIn) -> DeviceOut:
    """Add a device to a network (a device may belong to several)."""
    return DeviceOut.of(await ctx().registry.add_member(principal(), network_id, data.device_id))


@bp.delete("/networks/<network_id>/members/<device_id>")
@tag(["networks"])
@problems(409)
@document_response(NoContent, 204)
async def remove_member(network_id: str, device_id: str) -> Response:
    """Remove a device from a network other than its primary one."""
    await ctx().registry.remove_member(principal(), network_id, device_id)
    return no_content()


# ---------------------------------------------------------------- connections


@bp.get("/connections")
@tag(["connections"])
@problems()
@validate_querystring(ConnectionQuery)
@validate_response(ConnectionPage)
async def list_connections(query_args: ConnectionQuery) -> ConnectionPage:
    """List connections visible to the caller."""
    items, nxt = ctx().registry.list_connections(
        principal(),
        device_id=query_args.device_id,
        network_id=query_args.network_id,
        status=query_args.status,
        after=cursor(query_args.cursor),
        limit=page_limit(query_args.limit),
    )
    return ConnectionPage(items=[ConnectionOut.of(c) for c in items], next_cursor=nxt)


@bp.post("/connections")
@tag(["connections"])
@problems()
@validate_request(ConnectionIn)
@validate_response(ConnectionOut, 201)
async def open_connection(data: ConnectionIn) -> tuple[ConnectionOut, int, dict[str, str]]:
    """Record a connection from one device to another (or to this node)."""
    conn = await ctx().registry.open_connection(principal(), data.source_device_id, data.target_device_id)
    return ConnectionOut.of(conn), 201, {"Location": f"/api/v1/connections/{conn.connection_id}"}


@bp.get("/connections/<connection_id>")
@tag(["connections"])
@problems()
@validate_response(ConnectionOut)
async def get_connection(connection_id: str) -> ConnectionOut:
    """One connection."""
    return ConnectionOut.of(ctx().registry.get_connection(principal(), connection_id))


@bp.post("/connections/<connection_id>/heartbeat")
@tag(["connections"])
@problems(409)
@validate_response(ConnectionOut)
async def heartbeat_connection(connection_id: str) -> ConnectionOut:
    """Record a heartbeat on an open connection."""
    return ConnectionOut.of(await ctx().registry.heartbeat_connection(principal(), connection_id))


@bp.delete("/connections/<connection_id>")
@tag(["connections"])
@problems()
@validate_response(ConnectionOut)
async def close_connection(connection_id: str) -> ConnectionOut:
    """Close a connection (it stays listed with status closed)."""
    return ConnectionOut.of(await ctx().registry.close_connection(principal(), connection_id))
