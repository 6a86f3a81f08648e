"""gRPC server reflection (grpc.reflection.v1 and v1alpha) with grpclib's own implementation.

grpclib's `ServerReflection` answers from a google.protobuf descriptor pool. betterproto2's
generated code does not register anything there (only with its `google_protobuf_descriptors`
option, which would make every generated module import protobuf), so `scripts/gen-protos` also
writes a FileDescriptorSet (`protos/gen/descriptors.binpb`, imports included) and this module loads
it into a private pool. Needs the `protobuf` package at run time (grpclib's reflection messages
are protobuf-generated), imported only when reflection is switched on.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from node.rpc._gate import CallContext, Method, Stream

DESCRIPTORS = "descriptors.binpb"


def load_descriptor_pool() -> Any:
    """A private descriptor pool holding every Asgard proto file and its imports."""
    from google.protobuf import descriptor_pb2, descriptor_pool  # type: ignore[import-untyped]

    data = resources.files("protos.gen").joinpath(DESCRIPTORS).read_bytes()
    file_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in file_set.file:  # --include_imports lists dependencies first
        pool.Add(file_proto)
    # The reflection services describe themselves too (grpcurl asks for them).
    from grpclib.reflection.v1 import reflection_pb2 as v1
    from grpclib.reflection.v1alpha import reflection_pb2 as v1alpha

    for module in (v1, v1alpha):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


def reflection_methods(service_names: list[str]) -> list[Method]:
    """The reflection services' methods, describing `service_names` (and themselves)."""
    from grpclib.reflection._deprecated import ServerReflection as ServerReflectionV1Alpha
    from grpclib.reflection.service import ServerReflection

    pool = load_descriptor_pool()
    names = sorted({*service_names, *_REFLECTION_SERVICES})
    methods = []
    for cls in (ServerReflection, ServerReflectionV1Alpha):
        servable = cls(_service_names=names, _pool=pool)
        for name, handler in servable.__mapping__().items():
            methods.append(
                Method(
                    name,
                    _adapt(handler.func),
                    handler.cardinality,
                    handler.request_type,
                    handler.reply_type,
                    cancel_on_drain=True,
                )
            )
    return methods


_REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection",
                        "grpc.reflection.v1alpha.ServerReflection")  # fmt: skip


def _adapt(func: Any) -> Any:
    async def handler(stream: Stream, ctx: CallContext) -> None:
        await func(stream)

    return handler
