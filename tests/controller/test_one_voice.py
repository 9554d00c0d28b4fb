"""The API says the same thing everywhere (issue: what independent clients found): a state is
named the same by every call, bad uploads get INVALID_ARGUMENT naming what is wrong and no
internal path, tensors have one name and one shape rule, messages name request fields rather
than CLI flags. A real controller and three agents on loopback."""

from __future__ import annotations

import hashlib
import io
import zipfile

import grpc
import numpy as np
import pytest
from layerfleet.controller import wire
from layerfleet.controller.cli_common import with_flags
from layerfleet.controller.errors import ApiError
from layerfleet.v1 import controller_pb2, controller_pb2_grpc

from .conftest import save_small_model
from .test_end_to_end import call

X = np.random.default_rng(0).random((1, 12, 12, 1), dtype=np.float32)


async def _deployed(fleet, tmp_path) -> list:
    with fleet.client() as client:
        await call(client.register_file, await call(save_small_model, tmp_path / "small.keras"))
        return await call(lambda: list(client.deploy("small", objective="throughput")))


def _raw_upload(address: str, header: controller_pb2.ModelHeader, data: bytes) -> grpc.RpcError:
    """RegisterModel from a client that fills the header itself (as any gRPC client may)."""
    with grpc.insecure_channel(address) as channel:
        stub = controller_pb2_grpc.ControllerStub(channel)
        parts = [controller_pb2.ModelUpload(header=header)]
        parts += [controller_pb2.ModelUpload(chunk=data)] if data else []
        with pytest.raises(grpc.RpcError) as err:
            stub.RegisterModel(iter(parts), timeout=60)
        return err.value


async def test_infer_on_an_undeployed_deployment_says_it_is_undeployed(fleet, tmp_path):
    await _deployed(fleet, tmp_path)
    with fleet.client() as client:
        await call(client.undeploy, "small")
        assert (await call(client.deployment, "small")).state == \
            controller_pb2.DEPLOYMENT_STATE_UNDEPLOYED
        with pytest.raises(ApiError) as err:
            await call(client.infer, "small", X)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.message.startswith("deployment small is undeployed")
    assert "unknown" not in err.value.message


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, data, problem", [
    (controller_pb2.KERAS, b"this is not a model", "not a .keras file"),
    (controller_pb2.KERAS, _zip({"notes.txt": b"hello"}), "holds no config.json"),
    (controller_pb2.KERAS, _zip({"config.json": b"{not json", "metadata.json": b"{}"}),
     "cannot load"),
    (controller_pb2.H5, b"\x00" * 2048, "not an .h5 file"),
    (controller_pb2.SAVEDMODEL_TAR, b"not a tar", "not a readable tar"),
])
async def test_a_file_that_is_not_a_model_is_invalid_argument_without_internal_paths(
        fleet, fmt, data, problem):
    header = controller_pb2.ModelHeader(name="broken", format=fmt, size_bytes=len(data),
                                        sha256=hashlib.sha256(data).hexdigest())
    with fleet.client() as client:
        with pytest.raises(ApiError) as err:
            await call(client._upload, header, data, None)
        assert await call(client.models) == []
    message = err.value.message
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert problem in message
    state = str(fleet.root)
    assert state not in message and "/tmp" not in message and ".intake" not in message
    assert "File not found" not in message


@pytest.mark.parametrize("missing, fields", [
    ("ModelHeader.size_bytes", {"sha256": "0" * 64}),
    ("ModelHeader.sha256", {"size_bytes": 3}),
    ("ModelHeader.name", {"size_bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}),
])
async def test_a_header_without_a_required_field_names_the_field(fleet, missing, fields):
    name = "" if missing == "ModelHeader.name" else "m"
    header = controller_pb2.ModelHeader(name=name, format=controller_pb2.KERAS, **fields)
    err = await call(_raw_upload, fleet.controller.address, header, b"abc")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert missing in err.details() and "required" in err.details()


async def test_model_info_deployment_and_infer_name_and_shape_tensors_alike(fleet, tmp_path):
    with fleet.client() as client:
        model = await call(save_small_model, tmp_path / "small.keras")
        info = await call(client.register_file, model)
        await call(lambda: list(client.deploy("small", objective="throughput")))
        dep = await call(client.deployment, "small")
        result = await call(client.infer, "small", {"pixels": X})

    def specs(items):
        return [(t.name, t.dtype, list(t.shape)) for t in items]

    assert specs(info.inputs) == specs(dep.inputs) == [("pixels", 1, [1, 12, 12, 1])]
    assert specs(info.outputs) == specs(dep.outputs)
    assert [(t.name, list(t.shape)) for t in info.outputs] == \
        [(name, list(value.shape)) for name, value in result.outputs.items()] == \
        [("probs", [1, 10])]


async def test_a_single_misnamed_input_is_refused_and_a_nameless_one_binds(fleet, tmp_path):
    await _deployed(fleet, tmp_path)
    with fleet.client() as client:
        with pytest.raises(ApiError) as err:
            await call(client.infer, "small", {"image": X})
        by_name = (await call(client.infer, "small", {"pixels": X})).output
        bare = (await call(client.infer, "small", X)).output
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "pixels float32[1, 12, 12, 1]" in err.value.message and "'image'" in err.value.message
    np.testing.assert_array_equal(by_name, bare)


async def test_deploy_progress_gives_shard_sizes_in_a_unit_that_fits(fleet, tmp_path):
    steps = await _deployed(fleet, tmp_path)
    phases = [wire.PHASE.word(s.phase) for s in steps]
    assert phases[0] == "plan" and phases[-2:] == ["route", "done"], phases
    uploads = [s.message for s in steps if s.phase == controller_pb2.DEPLOY_PHASE_UPLOAD]
    assert uploads and all(m.endswith(" KB)") for m in uploads), uploads
    assert not any("(0.0 MB)" in m for m in uploads)


async def test_errors_name_request_fields_and_the_cli_shows_its_flags(fleet, tmp_path):
    await _deployed(fleet, tmp_path)
    with fleet.client() as client:
        with pytest.raises(ApiError) as energy:
            await call(client.plan, "small", objective="energy")
        with pytest.raises(ApiError) as twice:
            await call(lambda: list(client.deploy("small")))
    for message in (energy.value.message, twice.value.message):
        assert "--" not in message, message
    assert "sla_ms" in energy.value.message
    assert "DeployRequest.name" in twice.value.message
    assert "--sla MS" in with_flags(energy.value.message)
    assert "--name" in with_flags(twice.value.message)


async def test_a_dynamic_shape_refusal_names_the_header_field(fleet, tmp_path):
    import keras

    inp = keras.Input((None, None, 3))
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    keras.Model(inp, out, name="dyn").save(tmp_path / "dyn.keras")
    with fleet.client() as client, pytest.raises(ApiError) as err:
        await call(client.register_file, tmp_path / "dyn.keras")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "input_shape" in err.value.message and "--" not in err.value.message
    assert "--input-shape" in with_flags(err.value.message)


def _send_raw(address: str, method: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/layerfleet.v1.Controller/{method}")
        with pytest.raises(grpc.RpcError) as err:
            call(payload, timeout=30)
        return err.value


async def test_a_client_built_from_the_old_proto_is_told_objective_is_an_enum_now(fleet):
    """Before 0.2, PlanRequest.objective was string field 2 (now reserved): such a request
    must not silently plan for latency."""
    old_plan = b"\x0a\x05small" + b"\x12\x0athroughput"       # model=1, objective=2 (string)
    err = await call(_send_raw, fleet.controller.address, "Plan", old_plan)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "objective" in err.details() and "controller.proto" in err.details()
    old_deploy = b"\x0a\x05small" + b"\x2a\x03gnh"              # redundancy=5 (string)
    err = await call(_send_raw, fleet.controller.address, "Deploy", old_deploy)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "redundancy" in err.details()


def test_every_enum_value_has_a_word_and_every_word_a_value():
    """wire.Labels refuses at import an enum and a word list that disagree."""
    with pytest.raises(ImportError, match="OBJECTIVE_WEIGHTED"):
        wire.Labels(controller_pb2.Objective, "OBJECTIVE_", ("latency", "throughput",
                                                             "energy"))
    assert [wire.OBJECTIVE.word(wire.OBJECTIVE.wire(w)) for w in wire.OBJECTIVE.words] == \
        list(wire.OBJECTIVE.words)
    assert wire.DEPLOYMENT_STATE.word(99) == "unknown(99)"
