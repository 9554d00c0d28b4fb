"""Model intake: an upload or an architecture name becomes a stored, profiled ModelRecord.

Uploaded bytes are checked (size, sha256) before anything is written; the file is stored
under `models/<sha256>/` by atomic rename, loaded with the partitioner and profiled. A
keras.applications model is built once (weights=None, random init) and saved as .keras, so
every later split of it uses the same weights. TensorFlow work runs in a worker thread: the
event loop keeps serving while a model loads.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import grpc
from layerfleet.agent import names, tensors, transport
from layerfleet.controller.errors import ApiError
from layerfleet.controller.partition.load import file_format_problem
from layerfleet.controller.registry import ModelRecord, Registry
from layerfleet.v1 import controller_pb2

_SUFFIX = {controller_pb2.KERAS: ".keras", controller_pb2.H5: ".h5"}
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# One sample of a model's input must fit one Infer message (transport.MAX_MESSAGE_BYTES).
MAX_INPUT_BYTES = transport.MAX_MESSAGE_BYTES
# A SavedModel is a few files (saved_model.pb, variables/, assets/); bound what a tar may
# make us write, whatever its headers claim.
MAX_TAR_MEMBERS = 10_000
MAX_TAR_BYTES = 4 << 30


@dataclass(frozen=True, slots=True)
class Intake:
    """What a RegisterModel call asked for, validated."""

    name: str
    format: int
    builtin: str
    input_shape: tuple[int, ...] | None
    data: bytes


def check_header(header: controller_pb2.ModelHeader) -> None:
    """The header alone, as soon as it arrives: the fields controller.proto marks required
    (INVALID_ARGUMENT naming the field, before any byte is counted)."""
    fmt = header.format
    if fmt not in (*_SUFFIX, controller_pb2.SAVEDMODEL_TAR, controller_pb2.BUILTIN):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "ModelHeader.format is missing or unknown: KERAS, H5, SAVEDMODEL_TAR "
                       "or BUILTIN")
    if fmt == controller_pb2.BUILTIN:
        if not header.builtin:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "format BUILTIN needs ModelHeader.builtin, an architecture name "
                           "such as MobileNetV2")
        return
    if not header.name:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "ModelHeader.name is required for an upload (the registry name)")
    if header.size_bytes <= 0:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "ModelHeader.size_bytes is required for an upload: the size of the "
                       "uploaded file in bytes")
    if not SHA256_HEX.fullmatch(header.sha256):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "ModelHeader.sha256 is required for an upload: the sha256 of the "
                       "uploaded bytes as 64 hex digits")


def check_upload(header: controller_pb2.ModelHeader, data: bytes) -> Intake:
    """Validate an upload before anything touches the disk (DATA_LOSS / INVALID_ARGUMENT)."""
    check_header(header)
    fmt = header.format
    if fmt == controller_pb2.BUILTIN:
        if data:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "format BUILTIN takes no uploaded bytes")
    else:
        if len(data) != header.size_bytes:
            raise ApiError(grpc.StatusCode.DATA_LOSS,
                           f"upload truncated: received {len(data)} of {header.size_bytes} "
                           f"bytes; nothing was registered")
        digest = hashlib.sha256(data).hexdigest()
        if digest != header.sha256.lower():
            raise ApiError(grpc.StatusCode.DATA_LOSS,
                           f"upload corrupt: sha256 {digest[:12]}... does not match the "
                           f"declared {header.sha256[:12]}...; nothing was registered")
        if fmt in _SUFFIX:
            problem = file_format_problem(data, _SUFFIX[fmt])
            if problem:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model {header.name!r}: the upload is {problem}; nothing was "
                               f"registered")
    name = header.name or header.builtin
    if not name:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "a model name is needed for an upload")
    try:
        names.check_name("model", name)
    except names.InvalidName as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    shape = tuple(int(d) for d in header.input_shape) or None
    if shape:
        check_input_shape(shape)
    return Intake(name, fmt, header.builtin, shape, data)


def check_input_shape(shape: tuple[int, ...]) -> None:
    """A declared input shape (without batch) must be positive and small enough that one
    float32 sample fits an Infer message; else INVALID_ARGUMENT."""
    try:
        if any(d <= 0 for d in shape):
            raise tensors.TensorError(f"every dimension must be positive, shape is "
                                      f"{list(shape)}")
        tensors.check_shape(shape, 4, MAX_INPUT_BYTES, "input")
    except tensors.TensorError as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"input shape: {exc}") from None


class Catalog:
    def __init__(self, registry: Registry, models_dir: Path) -> None:
        self.registry = registry
        self.models_dir = models_dir
        models_dir.mkdir(parents=True, exist_ok=True)

    async def register(self, intake: Intake) -> ModelRecord:
        record = await asyncio.to_thread(self._register_blocking, intake)
        self.registry.add_model(record)
        return record

    def _register_blocking(self, intake: Intake) -> ModelRecord:
        from layerfleet.controller.partition import (
            Analysis,
            ModelFileError,
            PartitionError,
            load_model,
        )

        staging = Path(tempfile.mkdtemp(prefix=".intake-", dir=self.models_dir))
        try:
            spec, source = self._stage(intake, staging)
            try:
                model = load_model(spec, input_shape=intake.input_shape)
                analysis = Analysis(model)
            except ModelFileError as exc:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model {intake.name!r} could not be loaded: "
                               f"{_public(exc, staging)}") from None
            except PartitionError as exc:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"model {intake.name!r} cannot be partitioned: "
                               f"{_public(exc, staging)}") from None
            except (OSError, ValueError) as exc:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model {intake.name!r} could not be loaded: "
                               f"{_public(exc, staging)}") from None
            profile, digest = analysis.profile, analysis.digest
            # The names and shapes a deployment and Infer use: the graph's (batch 1).
            inputs = [_spec(e) for e in analysis.graph.crossing(0)]
            outputs = [_spec(e) for e in analysis.graph.crossing(analysis.graph.n)]
            final = self.models_dir / digest
            if intake.format == controller_pb2.BUILTIN:
                model.save(staging / "model.keras")  # freeze the random init once
                spec = str(staging / "model.keras")
            stored = Path(spec).relative_to(staging)
            target = final / stored
            if not target.exists():  # same digest stored before: keep the first copy
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / stored, target)
            return ModelRecord(
                name=intake.name, digest=digest, source=source, path=str(target),
                input_shape=list(intake.input_shape or ()), profile=profile.to_dict(),
                inputs=inputs, outputs=outputs,
                layers=len(profile.layers), flops=sum(l.flops for l in profile.layers),
                param_bytes=sum(l.param_bytes for l in profile.layers), created_at=time.time())
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _stage(self, intake: Intake, staging: Path) -> tuple[str, str]:
        """Write the upload into the staging directory; return (load spec, source label)."""
        if intake.format == controller_pb2.BUILTIN:
            return intake.builtin, f"builtin:{intake.builtin}"
        if intake.format == controller_pb2.SAVEDMODEL_TAR:
            target = staging / "savedmodel"
            extract_tar(intake.data, target)
            roots = [p.parent for p in target.rglob("saved_model.pb")]
            if len(roots) != 1:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               "SavedModel tar must hold exactly one saved_model.pb")
            return str(roots[0]), "upload:savedmodel"
        path = staging / f"model{_SUFFIX[intake.format]}"
        path.write_bytes(intake.data)
        return str(path), f"upload:{path.suffix.lstrip('.')}"


def _spec(edge: Any) -> dict[str, Any]:
    """A graph edge as the registry keeps tensor specs (the manifest's rule: batch 1)."""
    return {"name": edge.name, "dtype": str(edge.dtype), "shape": [int(d) for d in edge.shape]}


def _public(exc: Exception, staging: Path) -> str:
    """An error's text without the controller's own paths: the caller never sees them."""
    return str(exc).replace(f"{staging}{os.sep}", "").replace(str(staging), "the upload")


def extract_tar(data: bytes, target: Path) -> None:
    """Unpack a SavedModel tar into the fresh directory `target`, or refuse it whole
    (INVALID_ARGUMENT) before writing anything: every member must be a regular file or a
    directory with a relative path that stays inside `target` (no links, devices, absolute
    paths or `..`), at most MAX_TAR_MEMBERS of them and MAX_TAR_BYTES in all. Files are
    written by this code, not by tarfile's extraction (whose filters have had holes:
    CVE-2025-4517), and never through a link."""
    def refuse(why: str) -> ApiError:
        return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"SavedModel upload refused: {why}")

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
            files: set[PurePosixPath] = set()
            dirs: set[PurePosixPath] = set()
            total = 0
            for member in tar:
                if len(members) >= MAX_TAR_MEMBERS:
                    raise refuse(f"more than {MAX_TAR_MEMBERS} members")
                path = PurePosixPath(member.name)
                if member.isdir() and not path.parts:   # "." or "./": the target itself
                    continue
                if not (member.isfile() or member.isdir()) or member.issparse():
                    raise refuse(f"member {member.name[:100]!r} is not a regular file or "
                                 f"directory (a SavedModel needs no links or devices)")
                if path.is_absolute() or ".." in path.parts or "\\" in member.name \
                        or not path.parts or "\0" in member.name:
                    raise refuse(f"member {member.name[:100]!r} would land outside the model "
                                 f"directory")
                total += member.size
                if total > MAX_TAR_BYTES:
                    raise refuse(f"more than {MAX_TAR_BYTES} bytes once unpacked")
                # A path twice (a file, or a file and a directory), or a file standing where
                # a directory must be: refused before anything is written.
                if path in files or (member.isfile() and path in dirs) or \
                        any(parent in files for parent in path.parents):
                    raise refuse(f"member {member.name[:100]!r} appears twice")
                (files if member.isfile() else dirs).add(path)
                dirs.update(path.parents)  # made on the way to this member
                members.append((member, path))
            target.mkdir(mode=0o700)
            for member, path in members:
                out = target.joinpath(*path.parts)
                if member.isdir():
                    out.mkdir(mode=0o700, parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None   # a regular file
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except tarfile.TarError as exc:
        raise refuse(f"not a readable tar ({exc})") from None
    except FileExistsError as exc:
        raise refuse(f"member {Path(exc.filename or '').name!r} appears twice") from None
