"""A controller client written from the .proto files alone, the way a client in another
language is: no layerfleet import, no generated stubs. The .proto files are compiled at test
time (grpcio-tools) into descriptors, messages are built dynamically in a private pool, and
requests and replies are plain dicts in protobuf's JSON mapping (what Node's proto-loader,
grpcurl or a browser client hand around). The same class also works from descriptors fetched
by server reflection instead of the files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

PROTOS = Path(__file__).resolve().parents[2] / "protos"


def compile_protos(out: Path) -> descriptor_pb2.FileDescriptorSet:
    """protoc on protos/layerfleet/v1/*.proto, with comments, into a FileDescriptorSet.
    In its own process, as a build step is (grpc_tools' in-process protoc is not safe to
    run beside a busy gRPC server in threads)."""
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "layerfleet" / "v1").glob(
        "*.proto"))
    target = out / "layerfleet.binpb"
    result = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
                             "--include_imports", "--include_source_info",
                             f"--descriptor_set_out={target}", *files],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"protoc failed on the .proto files: {result.stderr}"
    return descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes())


class ProtoClient:
    """Calls any method of any service in `files` by its full name, with dicts."""

    def __init__(self, channel: grpc.Channel, files: Iterable[descriptor_pb2.FileDescriptorProto]
                 ) -> None:
        self.channel = channel
        self.pool = descriptor_pool.DescriptorPool()  # private: never our stubs' pool
        pending, added = list(files), set()
        while pending:  # dependencies first (reflection sends files in any order)
            ready = [f for f in pending if set(f.dependency) <= added]
            assert ready, f"unresolvable imports in {[f.name for f in pending]}"
            for f in ready:
                self.pool.Add(f)
                added.add(f.name)
                pending.remove(f)

    def message(self, full_name: str, fields: dict[str, Any] | None = None) -> Any:
        cls = message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))
        return json_format.ParseDict(fields or {}, cls())

    def _method(self, full_method: str) -> tuple[str, Any, Any]:
        service, name = full_method.rsplit(".", 1)
        method = self.pool.FindServiceByName(service).methods_by_name[name]
        request = message_factory.GetMessageClass(method.input_type)
        reply = message_factory.GetMessageClass(method.output_type)
        return f"/{service}/{name}", request, reply

    @staticmethod
    def as_dict(message: Any) -> dict[str, Any]:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    def unary(self, full_method: str, request: dict[str, Any] | Any = None,
              timeout: float = 60) -> dict[str, Any]:
        path, req, rep = self._method(full_method)
        call = self.channel.unary_unary(path, request_serializer=req.SerializeToString,
                                        response_deserializer=rep.FromString)
        if not hasattr(request, "SerializeToString"):
            request = json_format.ParseDict(request or {}, req())
        return self.as_dict(call(request, timeout=timeout))

    def server_stream(self, full_method: str, request: dict[str, Any],
                      timeout: float = 300) -> Iterator[dict[str, Any]]:
        path, req, rep = self._method(full_method)
        call = self.channel.unary_stream(path, request_serializer=req.SerializeToString,
                                         response_deserializer=rep.FromString)
        for reply in call(json_format.ParseDict(request, req()), timeout=timeout):
            yield self.as_dict(reply)

    def client_stream(self, full_method: str, requests: Iterable[Any],
                      timeout: float = 300) -> dict[str, Any]:
        path, req, rep = self._method(full_method)
        call = self.channel.stream_unary(path, request_serializer=req.SerializeToString,
                                         response_deserializer=rep.FromString)
        return self.as_dict(call(iter(list(requests)), timeout=timeout))

    def bidi(self, full_method: str, requests: Iterable[dict[str, Any]],
             timeout: float = 300) -> list[dict[str, Any]]:
        path, req, rep = self._method(full_method)
        call = self.channel.stream_stream(path, request_serializer=req.SerializeToString,
                                          response_deserializer=rep.FromString)
        messages = [json_format.ParseDict(r, req()) for r in requests]
        return [self.as_dict(r) for r in call(iter(messages), timeout=timeout)]


def comments(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    """Leading and trailing comments by element: 'layerfleet.v1.ModelHeader.name' -> text.
    Paths follow descriptor.proto: 4 = message_type, 2 = field, 5 = enum_type, 2 = value."""
    found: dict[str, str] = {}
    for f in files:
        for location in f.source_code_info.location:
            path = list(location.path)
            text = (location.leading_comments + " " + location.trailing_comments).strip()
            if not text or len(path) < 2:
                continue
            name = _element(f, path)
            if name:
                found[name] = " ".join(text.split())
    return found


def _element(f: descriptor_pb2.FileDescriptorProto, path: list[int]) -> str:
    prefix = f.package
    if path[0] == 4:  # message, maybe a field of it
        message = f.message_type[path[1]]
        if len(path) == 2:
            return f"{prefix}.{message.name}"
        if len(path) == 4 and path[2] == 2:
            return f"{prefix}.{message.name}.{message.field[path[3]].name}"
    if path[0] == 5:  # top-level enum, maybe a value of it
        enum = f.enum_type[path[1]]
        if len(path) == 2:
            return f"{prefix}.{enum.name}"
        if len(path) == 4 and path[2] == 2:
            return f"{prefix}.{enum.name}.{enum.value[path[3]].name}"
    return ""
