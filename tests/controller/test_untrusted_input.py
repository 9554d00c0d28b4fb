"""The controller as an attacker without credentials finds it: names that are paths,
archives that write outside, shapes and numbers that overflow. Each is refused with
INVALID_ARGUMENT before it touches anything, and the controller keeps serving."""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import os
import tarfile
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from layerfleet.agent import tensors
from layerfleet.controller.errors import ApiError
from layerfleet.v1 import controller_pb2, controller_pb2_grpc, fleet_pb2, fleet_pb2_grpc

from .conftest import save_small_model


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


def _bait(root: Path) -> Path:
    """A directory outside the controller's state that a path-name attack would delete."""
    victim = root / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("still here")
    return victim


@pytest.mark.parametrize("name", ["..", "../x", "/x", "...", "../../victim", "a/b"])
async def test_a_deployment_name_that_is_a_path_is_refused_and_nothing_is_touched(
        fleet, tmp_path, name):
    victim = _bait(tmp_path)
    state = fleet.controller.settings.state_dir
    with fleet.client() as client:
        await call(client.register_file, save_small_model(tmp_path / "small.keras"))
        before = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
        with pytest.raises(ApiError) as err:
            await call(lambda: list(client.deploy("small", name=name)))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "letters, digits" in err.value.message
        assert (victim / "keep.txt").read_text() == "still here"
        after = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
        assert [p for p in before if p not in after] == []
        assert [m.name for m in await call(client.models)] == ["small"]
        steps = await call(lambda: list(client.deploy("small", name="fine")))
        assert steps[-1].phase == controller_pb2.DEPLOY_PHASE_DONE


def link_chain_tar(escape_to: str) -> bytes:
    """A tar that tarfile's "data" filter lets write outside its target on CPython before
    3.11.13 / 3.12.11 / 3.13.4 (CVE-2025-4517): symlinks nested past PATH_MAX, which
    realpath() stops resolving, lead to a link that points `escape_to` relative to the
    target, and a regular file is written through it."""
    comp, steps = "d" * 247, "abcdefghijklmnop"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        path = ""
        for step in steps:
            directory = tarfile.TarInfo(os.path.join(path, comp))
            directory.type = tarfile.DIRTYPE
            tar.addfile(directory)
            link = tarfile.TarInfo(os.path.join(path, step))
            link.type, link.linkname = tarfile.SYMTYPE, comp
            tar.addfile(link)
            path = os.path.join(path, comp)
        long_link = os.path.join(*steps, "l" * 254)
        up = tarfile.TarInfo(long_link)
        up.type, up.linkname = tarfile.SYMTYPE, os.path.join(*[".."] * len(steps))
        tar.addfile(up)
        escape = tarfile.TarInfo("escape")
        escape.type, escape.linkname = tarfile.SYMTYPE, f"{long_link}/{escape_to}"
        tar.addfile(escape)
        data = b"written outside the state directory\n"
        payload = tarfile.TarInfo("escape/pwned")
        payload.size = len(data)
        tar.addfile(payload, io.BytesIO(data))
    return buffer.getvalue()


def _register_raw(address: str, data: bytes, **header) -> controller_pb2.ModelInfo:
    with grpc.insecure_channel(address) as channel:
        stub = controller_pb2_grpc.ControllerStub(channel)
        head = controller_pb2.ModelHeader(name="evil", format=controller_pb2.SAVEDMODEL_TAR,
                                          sha256=hashlib.sha256(data).hexdigest(),
                                          size_bytes=len(data), **header)
        parts = [controller_pb2.ModelUpload(header=head)]
        parts += [controller_pb2.ModelUpload(chunk=data[i:i + (1 << 20)])
                  for i in range(0, len(data), 1 << 20)]
        return stub.RegisterModel(iter(parts), timeout=60)


async def test_a_savedmodel_tar_with_a_link_chain_is_refused_before_anything_is_written(
        tmp_path):
    from .conftest import start_controller

    controller = await start_controller(tmp_path, calibrate=False)
    try:
        # The intake unpacks into state/models/.intake-*/savedmodel: four levels below
        # tmp_path, where the bait is.
        victim = _bait(tmp_path)
        with pytest.raises(grpc.RpcError) as err:
            await call(_register_raw, controller.address,
                       link_chain_tar("../../../../victim"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a regular file or directory" in err.value.details()
        assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
        assert not list((controller.settings.state_dir / "models").iterdir())
    finally:
        await controller.stop(grace_s=0)


@pytest.mark.parametrize("member, why", [
    ("hardlink", "not a regular file or directory"),
    ("/etc/evil", "would land outside"),
    ("../evil", "would land outside"),
    ("fifo", "not a regular file or directory"),
])
def test_the_tar_intake_refuses_members_that_are_not_plain_files_inside(tmp_path, member,
                                                                        why):
    from layerfleet.controller.catalog import extract_tar

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        ok = tarfile.TarInfo("saved_model.pb")
        tar.addfile(ok, io.BytesIO(b""))
        info = tarfile.TarInfo(member if member.startswith(("/", ".")) else "x")
        if member == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "saved_model.pb"
        elif member == "fifo":
            info.type = tarfile.FIFOTYPE
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ApiError, match=why):
        extract_tar(buffer.getvalue(), tmp_path / "target")
    assert not (tmp_path / "target").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_tar_intake_bounds_members_and_bytes(tmp_path, monkeypatch):
    from layerfleet.controller import catalog

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(5):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 100
            tar.addfile(info, io.BytesIO(b"\0" * 100))
    monkeypatch.setattr(catalog, "MAX_TAR_MEMBERS", 4)
    with pytest.raises(ApiError, match="more than 4 members"):
        catalog.extract_tar(buffer.getvalue(), tmp_path / "a")
    monkeypatch.setattr(catalog, "MAX_TAR_MEMBERS", 10)
    monkeypatch.setattr(catalog, "MAX_TAR_BYTES", 450)
    with pytest.raises(ApiError, match="more than 450 bytes"):
        catalog.extract_tar(buffer.getvalue(), tmp_path / "b")
    assert not list(tmp_path.iterdir())


async def test_an_input_shape_whose_size_overflows_is_refused(tmp_path):
    from .conftest import start_controller

    controller = await start_controller(tmp_path, calibrate=False)
    try:
        with controller_client(controller) as client:
            with pytest.raises(ApiError) as err:
                await call(client.register_builtin, "MobileNetV2",
                           input_shape=(2 ** 40, 2 ** 40, 3))
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "input shape" in err.value.message
            assert await call(client.models) == []
    finally:
        await controller.stop(grace_s=0)


def controller_client(controller):
    from layerfleet.controller.client import ControllerClient

    return ControllerClient(controller.address)


HOSTILE = [[1] * 65, [2 ** 62, 2 ** 62, 0]]


async def test_a_bad_shape_in_a_stream_of_good_requests_fails_alone(fleet, tmp_path):
    with fleet.client() as client:
        await call(client.register_file, save_small_model(tmp_path / "small.keras"))
        await call(lambda: list(client.deploy("small")))
    x = tensors.encode("pixels", np.zeros((1, 12, 12, 1), np.float32))
    calls = [controller_pb2.InferCall(request_id=1, deployment="small", tensors=[x])]
    calls += [controller_pb2.InferCall(request_id=2 + i, deployment="small", tensors=[
        tensors_pb(shape)]) for i, shape in enumerate(HOSTILE)]
    calls += [controller_pb2.InferCall(request_id=9, deployment="small", tensors=[x])]

    def stream() -> dict[int, controller_pb2.InferResult]:
        with grpc.insecure_channel(fleet.controller.address) as channel:
            stub = controller_pb2_grpc.ControllerStub(channel)
            return {r.request_id: r for r in stub.InferStream(iter(calls), timeout=60)}

    results = await call(stream)
    assert sorted(results) == [1, 2, 3, 9]
    for bad in (2, 3):
        assert results[bad].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "tensor 'pixels'" in results[bad].error
    assert results[1].error_code == results[9].error_code == 0 and results[9].tensors

    def unary(shape) -> None:
        with grpc.insecure_channel(fleet.controller.address) as channel:
            controller_pb2_grpc.ControllerStub(channel).Infer(controller_pb2.InferCall(
                deployment="small", tensors=[tensors_pb(shape)]), timeout=30)

    for shape in HOSTILE:
        with pytest.raises(grpc.RpcError) as err:
            await call(unary, shape)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Traceback" not in err.value.details()


def tensors_pb(shape):
    from layerfleet.v1 import tensor_pb2

    return tensor_pb2.Tensor(name="pixels", dtype=tensor_pb2.FLOAT32, shape=shape,
                             data=bytes(4 * math.prod(shape)))   # only the shape is wrong


@pytest.mark.parametrize("request_fields, why", [
    (dict(sla_ms=float("nan")), "sla_ms"),
    (dict(sla_ms=-5.0), "sla_ms"),
    (dict(plan=-1), "candidate -1"),
    (dict(model="../small"), "letters, digits"),
])
async def test_numbers_and_names_in_a_deploy_request_are_range_checked(fleet, tmp_path,
                                                                       request_fields, why):
    with fleet.client() as client:
        await call(client.register_file, save_small_model(tmp_path / "small.keras"))

    def deploy() -> None:
        with grpc.insecure_channel(fleet.controller.address) as channel:
            request = controller_pb2.DeployRequest(**{"model": "small", **request_fields})
            list(controller_pb2_grpc.ControllerStub(channel).Deploy(request, timeout=60))

    with pytest.raises(grpc.RpcError) as err:
        await call(deploy)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in err.value.details()
    assert fleet.controller.registry.deployments() == []


async def test_a_join_with_a_device_id_that_is_a_path_is_refused(fleet):
    def join() -> None:
        with grpc.insecure_channel(fleet.controller.address) as channel:
            request = fleet_pb2.JoinRequest(token=fleet.token, address="127.0.0.1:9")
            request.device.device_id = "../../etc"
            fleet_pb2_grpc.FleetStub(channel).Join(request, timeout=10)

    with pytest.raises(grpc.RpcError) as err:
        await call(join)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fleet.controller.registry.device("../../etc") is None


member_st = st.tuples(
    st.text(st.sampled_from("ab./\\\x00"), min_size=1, max_size=12)
    | st.sampled_from(["..", "saved_model.pb", "a/../../b", "/etc/x", "./a"]),
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                     tarfile.CHRTYPE, tarfile.FIFOTYPE]),
    st.text(st.sampled_from("ab./"), max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.lists(member_st, max_size=6))
def test_any_tar_is_refused_whole_or_unpacked_entirely_inside_its_target(members):
    from layerfleet.controller.catalog import extract_tar

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, linkname in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            data = b"x" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tempfile.TemporaryDirectory() as root:
        base = Path(root)
        try:
            extract_tar(buffer.getvalue(), base / "target")
        except ApiError as exc:
            assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
            assert not (base / "target").exists()
            return
        written = list(base.rglob("*"))
        assert all(p.is_relative_to(base / "target") for p in written)
        assert not any(p.is_symlink() for p in written)
