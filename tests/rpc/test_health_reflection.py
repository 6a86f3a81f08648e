"""grpc.health.v1 and server reflection, through the official grpcio client."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpclib.reflection.v1 import reflection_pb2 as refl
from grpclib.reflection.v1alpha import reflection_pb2 as refl_alpha

from node.rpc import SERVICE_NAMES, RpcSettings
from node.rpc.testing import StaticAuthenticator
from tests.rpc.conftest import ADMIN_MD, Client, Running


async def test_health_check_reports_the_node_and_each_service(client: Client) -> None:
    h = client.stubs.health
    for service in ("", *SERVICE_NAMES):
        reply = await client.call(client.health.Check, h.HealthCheckRequest(service=service))
        assert reply.status == h.HealthCheckResponse.SERVING, service
    unknown = await client.error(client.health.Check, h.HealthCheckRequest(service="nope.v1.Nothing"))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    listing = await client.call(client.health.List, h.HealthListRequest())
    assert set(listing.statuses) == {"", *SERVICE_NAMES}


async def test_health_follows_what_the_node_sets(client: Client, rpc: Running) -> None:
    h = client.stubs.health
    rpc.server.health.set("asgard.v1.LockService", "not_serving")
    reply = await client.call(client.health.Check, h.HealthCheckRequest(service="asgard.v1.LockService"))
    assert reply.status == h.HealthCheckResponse.NOT_SERVING


async def test_health_watch_streams_changes_and_unknown_services(client: Client, rpc: Running) -> None:
    h = client.stubs.health
    watch = client.health.Watch(h.HealthCheckRequest(service="asgard.v1.Mesh"), timeout=10)
    try:
        first = await client.call(next, watch)
        assert first.status == h.HealthCheckResponse.SERVICE_UNKNOWN
        rpc.server.health.set("asgard.v1.Mesh", "serving")
        second = await client.call(next, watch)
        assert second.status == h.HealthCheckResponse.SERVING
        rpc.server.health.set("asgard.v1.Mesh", "serving")  # no change, no message
        rpc.server.health.set("asgard.v1.Mesh", "not_serving")
        third = await client.call(next, watch)
        assert third.status == h.HealthCheckResponse.NOT_SERVING
    finally:
        watch.cancel()


async def test_health_needs_no_token_but_counts_nothing_against_auth(
    client: Client, authenticator: StaticAuthenticator
) -> None:
    h = client.stubs.health
    await client.call(client.health.Check, h.HealthCheckRequest(service=""))
    assert authenticator.calls == 0


@pytest.mark.parametrize(
    "rpc_settings", [RpcSettings(host="127.0.0.1", port=0, public_health=False)], ids=["private"]
)
async def test_health_can_require_a_token(client: Client) -> None:
    h = client.stubs.health
    error = await client.error(client.health.Check, h.HealthCheckRequest(service=""))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = await client.call(client.health.Check, h.HealthCheckRequest(service=""), metadata=ADMIN_MD)
    assert reply.status == h.HealthCheckResponse.SERVING


def _reflect(channel: grpc.Channel, module: object, requests: list[object], path: str) -> list[object]:
    call = channel.stream_stream(
        path,
        request_serializer=module.ServerReflectionRequest.SerializeToString,  # type: ignore[attr-defined]
        response_deserializer=module.ServerReflectionResponse.FromString,  # type: ignore[attr-defined]
    )
    return list(call(iter(requests), metadata=ADMIN_MD, timeout=10))


async def test_reflection_lists_and_describes_the_services(client: Client) -> None:
    path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    listed, by_symbol = await client.call(
        _reflect,
        client.channel,
        refl,
        [
            refl.ServerReflectionRequest(list_services=""),
            refl.ServerReflectionRequest(file_containing_symbol="asgard.v1.Registry"),
        ],
        path,
    )
    names = {s.name for s in listed.list_services_response.service}
    assert set(SERVICE_NAMES) <= names
    assert "grpc.reflection.v1.ServerReflection" in names
    (raw,) = by_symbol.file_descriptor_response.file_descriptor_proto
    registry = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert registry.name == "asgard/v1/registry.proto"
    (timestamp_reply,) = await client.call(
        _reflect,
        client.channel,
        refl,
        [refl.ServerReflectionRequest(file_by_filename=registry.dependency[0])],
        path,
    )
    pool = descriptor_pool.DescriptorPool()
    for blob in (*timestamp_reply.file_descriptor_response.file_descriptor_proto, raw):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(blob))
    method = pool.FindMethodByName("asgard.v1.Registry.ListDevices")
    assert method.input_type.full_name == "asgard.v1.ListDevicesRequest"
    assert method.output_type.fields_by_name["next_page_token"].number == 2


async def test_reflection_v1alpha_answers_too(client: Client) -> None:
    (reply,) = await client.call(
        _reflect,
        client.channel,
        refl_alpha,
        [refl_alpha.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health")],
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    )
    (raw,) = reply.file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(raw).name == "grpc/health/v1/health.proto"


async def test_reflection_needs_a_token(client: Client) -> None:
    call = client.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=refl.ServerReflectionRequest.SerializeToString,
        response_deserializer=refl.ServerReflectionResponse.FromString,
    )

    def run() -> None:
        list(call(iter([refl.ServerReflectionRequest(list_services="")]), timeout=10))

    error = await client.error(run)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
