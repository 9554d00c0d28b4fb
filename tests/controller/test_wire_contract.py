"""The wire contract is usable without our Python code: a client built from the .proto files
alone (proto_client.py) drives the main calls against a real controller and three agents,
and a second one built from what server reflection (v1 and v1alpha) serves finds the same
services with their comments."""

from __future__ import annotations

import base64
import hashlib

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from .conftest import pin_speed, save_small_model
from .proto_client import ProtoClient, comments, compile_protos
from .test_end_to_end import call

C = "layerfleet.v1.Controller"


def tensor(name: str, array: np.ndarray) -> dict:
    """A Tensor as the proto says: dtype + shape + raw little-endian bytes in C order."""
    return {"name": name, "dtype": "FLOAT32", "shape": list(array.shape),
            "data": base64.b64encode(array.astype("<f4").tobytes()).decode()}


def array(t: dict) -> np.ndarray:
    assert t["dtype"] == "FLOAT32"
    return np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(
        [int(d) for d in t["shape"]])


def drive(client: ProtoClient, model_file, x: np.ndarray) -> dict:
    """The main calls, in the order a new user makes them."""
    seen: dict = {}
    seen["devices"] = client.unary(f"{C}.ListDevices")["devices"]
    data = model_file.read_bytes()
    header = client.message("layerfleet.v1.ModelUpload", {"header": {
        "name": "small", "format": "KERAS", "size_bytes": str(len(data)),
        "sha256": hashlib.sha256(data).hexdigest()}})
    chunks = []
    for offset in range(0, len(data), 64 << 10):
        chunk = client.message("layerfleet.v1.ModelUpload")
        chunk.chunk = data[offset:offset + (64 << 10)]
        chunks.append(chunk)
    seen["model"] = client.client_stream(f"{C}.RegisterModel", [header, *chunks])
    seen["models"] = client.unary(f"{C}.ListModels")["models"]
    seen["plan"] = client.unary(f"{C}.Plan", {"model": "small",
                                              "objective": "OBJECTIVE_THROUGHPUT", "top_k": 2})
    seen["progress"] = list(client.server_stream(f"{C}.Deploy", {
        "model": "small", "objective": "OBJECTIVE_THROUGHPUT"}))
    seen["deployment"] = client.unary(f"{C}.GetDeployment", {"name": "small"})
    seen["deployments"] = client.unary(f"{C}.ListDeployments")["deployments"]
    seen["infer"] = client.unary(f"{C}.Infer", {"request_id": "7", "deployment": "small",
                                                "tensors": [tensor("pixels", x)]})
    seen["stream"] = client.bidi(f"{C}.InferStream", [
        {"request_id": str(i), "deployment": "small", "tensors": [tensor("pixels", x)]}
        for i in range(1, 4)])
    seen["events"] = list(client.server_stream(f"{C}.WatchEvents", {"follow": False}))
    seen["undeploy"] = client.unary(f"{C}.Undeploy", {"name": "small"})
    seen["devices_after"] = client.unary(f"{C}.ListDevices")["devices"]  # heartbeats since
    return seen


async def test_a_client_from_the_proto_files_alone_drives_the_main_calls(fleet, tmp_path):
    pin_speed(fleet.controller)
    # Off the event loop the daemons share with this test (they must keep heartbeating).
    files = (await call(compile_protos, tmp_path)).file
    x = np.random.default_rng(0).random((1, 12, 12, 1), dtype=np.float32)
    model_file = await call(save_small_model, tmp_path / "small.keras")
    await fleet.wait_devices(3)
    with grpc.insecure_channel(fleet.controller.address) as channel:
        seen = await call(drive, ProtoClient(channel, files), model_file, x)

    assert [d["state"] for d in seen["devices"]] == ["DEVICE_STATE_UP"] * 3
    assert all(d.get("joules_total", 0) > 0 for d in seen["devices_after"]), \
        "the energy the agents report in their heartbeats"
    assert seen["model"]["name"] == "small" and seen["models"] == [seen["model"]]
    assert seen["model"]["inputs"] == [{"name": "pixels", "dtype": "FLOAT32",
                                        "shape": ["1", "12", "12", "1"]}]
    assert len(seen["plan"]["candidates"]) == 2 and seen["plan"]["baselines"]
    assert seen["progress"][-1]["phase"] == "DEPLOY_PHASE_DONE"
    dep = seen["deployment"]
    assert dep["state"] == "DEPLOYMENT_STATE_ACTIVE" and seen["deployments"] == [dep]
    assert dep["outputs"] == seen["model"]["outputs"]

    reply = seen["infer"]
    assert reply["request_id"] == "7" and "error_code" not in reply
    (out,) = reply["tensors"]
    assert out["name"] == "probs" and out["shape"] == ["1", "10"]
    probs = array(out)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert [int(h["stage"]) if "stage" in h else 0 for h in reply["hops"]] == \
        list(range(len(dep["stages"])))
    assert sorted(int(r["request_id"]) for r in seen["stream"]) == [1, 2, 3]
    assert all(np.array_equal(array(r["tensors"][0]), probs) for r in seen["stream"])

    # The same answer as our own client gives for the same input.
    with fleet.client() as ours:
        await call(lambda: list(ours.deploy("small", objective="throughput")))
        np.testing.assert_array_equal((await call(ours.infer, "small", x)).output, probs)
    kinds = [e["kind"] for e in seen["events"]]
    assert "model.registered" in kinds and "deploy.active" in kinds
    assert seen["undeploy"]["state"] == "DEPLOYMENT_STATE_UNDEPLOYED"


def _reflect(address: str, service: str) -> tuple[list[str], list]:
    """list_services and the files behind the Controller, over one reflection protocol."""
    from google.protobuf import descriptor_pb2

    with grpc.insecure_channel(address) as channel:
        method = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        replies = list(method(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=C)]), timeout=30))
    names = [s.name for s in replies[0].list_services_response.service]
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in replies[1].file_descriptor_response.file_descriptor_proto]
    return names, files


@pytest.mark.parametrize("protocol", ["grpc.reflection.v1.ServerReflection",
                                      "grpc.reflection.v1alpha.ServerReflection"])
async def test_reflection_serves_the_contract_with_its_comments(fleet, tmp_path, protocol):
    names, files = await call(_reflect, fleet.controller.address, protocol)
    assert {C, "layerfleet.v1.Fleet", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(names)
    served = comments(files)
    assert "Required for an upload" in served["layerfleet.v1.ModelHeader.name"]
    assert "Required for an upload" in served["layerfleet.v1.ModelHeader.sha256"]
    from_files = comments((await call(compile_protos, tmp_path)).file)
    assert served == {k: v for k, v in from_files.items() if k in served}, \
        "reflection serves other comments than the files"

    # Closed sets are enums, so their values are discoverable: every mode and state field.
    by_name = {f"{f.package}.{m.name}": m for f in files for m in f.message_type}
    enums = {f"{f.package}.{e.name}": [v.name for v in e.value] for f in files
             for e in f.enum_type}
    for field in ("PlanRequest.objective", "PlanRequest.redundancy", "DeployRequest.objective",
                  "DeployRequest.redundancy", "Candidate.objective", "DeployProgress.phase",
                  "DeviceStatus.state", "DeviceStatus.found_by", "StageStatus.state",
                  "Deployment.state"):
        message, name = field.split(".")
        (proto,) = [f for f in by_name[f"layerfleet.v1.{message}"].field if f.name == name]
        assert proto.type == proto.TYPE_ENUM, field
        assert len(enums[proto.type_name.lstrip(".")]) > 2, field
    assert enums["layerfleet.v1.Objective"][1:] == [
        "OBJECTIVE_LATENCY", "OBJECTIVE_THROUGHPUT", "OBJECTIVE_ENERGY", "OBJECTIVE_WEIGHTED"]
    assert "DEPLOY_PHASE_ACTIVATE" not in enums["layerfleet.v1.DeployPhase"]

    # A client built from reflection alone can call the controller.
    with grpc.insecure_channel(fleet.controller.address) as channel:
        devices = await call(ProtoClient(channel, files).unary, f"{C}.ListDevices")
    assert len(devices["devices"]) == 3
