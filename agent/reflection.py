"""gRPC server reflection for both daemons, the way clients of any language expect it.

- Both protocol versions: `grpc.reflection.v1alpha` (what grpcio-reflection ships) and
  `grpc.reflection.v1` (what current grpcurl, grpc-java and Postman ask for first). The two
  have the same messages field for field, so one servicer answers both; v1's descriptor is
  v1alpha's with the package renamed (grpcio-reflection has no v1 module yet).
- Layerfleet's own files are served *with their comments* (descriptors.binpb, written by
  protos/generate.py with source info): the generated stubs carry none, and without them a
  client cannot read which fields are required or what a value means.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from functools import cache
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"


@cache
def documented_files() -> dict[str, bytes]:
    """layerfleet's .proto files as serialized FileDescriptorProtos with comments, by name."""
    raw = (resources.files("layerfleet.v1") / "descriptors.binpb").read_bytes()
    found = descriptor_pb2.FileDescriptorSet.FromString(raw)
    return {f.name: f.SerializeToString() for f in found.file}


def _register_v1_descriptor() -> None:
    """Put grpc/reflection/v1/reflection.proto in the default pool (derived from v1alpha),
    so list_services and symbol lookups for v1 resolve like any other service."""
    pool = descriptor_pool.Default()
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = name, "grpc.reflection.v1"
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # proto2: assigning "" would mark it set
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)


class DocumentedReflection(ReflectionServicer):
    """The stock asyncio servicer, with our files swapped for their commented versions."""

    async def ServerReflectionInfo(self, request_iterator: AsyncIterator[Any],
                                   context: Any) -> AsyncIterator[Any]:
        documented = documented_files()
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response"):
                files = response.file_descriptor_response.file_descriptor_proto
                swapped = [documented.get(descriptor_pb2.FileDescriptorProto.FromString(f).name,
                                          f) for f in files]
                del files[:]
                files.extend(swapped)
            yield response


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection v1alpha and v1 for `service_names` (and reflection itself)."""
    _register_v1_descriptor()
    servicer = DocumentedReflection([*service_names, V1ALPHA, V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))
