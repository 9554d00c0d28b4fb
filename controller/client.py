"""The Python client of the controller: what the `layerfleet` CLI uses, and what users import.

    from layerfleet.controller import wire
    from layerfleet.controller.client import ControllerClient
    with ControllerClient("localhost:50050") as lf:
        lf.register_builtin("MobileNetV2", input_shape=(224, 224, 3))
        for step in lf.deploy("MobileNetV2"):
            print(wire.PHASE.word(step.phase), step.message)
        result = lf.infer("MobileNetV2", image)    # numpy in, numpy out

Synchronous on purpose (scripts and notebooks); errors come back as ApiError with the
controller's status code and message. Imports no TensorFlow. Replies are the wire messages;
their enums (states, phases) read as words through layerfleet.controller.wire, e.g.
`wire.DEPLOYMENT_STATE.word(dep.state) == "active"`.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from layerfleet.agent import tensors, transport
from layerfleet.agent.errors import status_code
from layerfleet.controller import wire
from layerfleet.controller.errors import ApiError
from layerfleet.v1 import controller_pb2, controller_pb2_grpc

DEFAULT_ADDRESS = "localhost:50050"
UPLOAD_CHUNK = 1 << 20
_FORMATS = {".keras": controller_pb2.KERAS, ".h5": controller_pb2.H5,
            ".tar": controller_pb2.SAVEDMODEL_TAR}


@dataclass(frozen=True, slots=True)
class InferOutcome:
    outputs: dict[str, np.ndarray]
    hops: list[controller_pb2.Hop]
    total_s: float
    exited_at_stage: int

    @property
    def output(self) -> np.ndarray:
        """The only output of a single-output model."""
        if len(self.outputs) != 1:
            raise ValueError(f"model has {len(self.outputs)} outputs: {sorted(self.outputs)}")
        return next(iter(self.outputs.values()))


def _api_error(exc: grpc.RpcError, address: str = "") -> ApiError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else str(exc)) or code.name
    port = address.rsplit(":", 1)[-1]
    if code == grpc.StatusCode.UNAVAILABLE and f":{port}" in details and "connect" in details:
        details = f"controller {address} unreachable: {details}"  # not a relayed hop error
    return ApiError(code, details)


class ControllerClient:
    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout_s: float = 30.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = transport.sync_channel(address)
        self._stub = controller_pb2_grpc.ControllerStub(self._channel)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout_s)
        except grpc.RpcError as exc:
            raise _api_error(exc, self.address) from None

    # -- models -------------------------------------------------------------------------

    def register_file(self, path: str | Path, *, name: str = "",
                      input_shape: Iterable[int] = (),
                      progress: Callable[[int, int], None] | None = None
                      ) -> controller_pb2.ModelInfo:
        """Upload a .keras or .h5 file, or a SavedModel directory (sent as a tar)."""
        path = Path(path)
        if path.is_dir():
            data, fmt = _tar_directory(path), controller_pb2.SAVEDMODEL_TAR
        elif path.suffix in _FORMATS:
            data, fmt = path.read_bytes(), _FORMATS[path.suffix]
        else:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{path}: expected a .keras or .h5 file or a SavedModel directory")
        header = controller_pb2.ModelHeader(
            name=name or path.stem, format=fmt, input_shape=list(input_shape),
            sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        return self._upload(header, data, progress)

    def register_builtin(self, architecture: str, *, name: str = "",
                         input_shape: Iterable[int] = ()) -> controller_pb2.ModelInfo:
        """A keras.applications architecture, built by the controller with weights=None."""
        header = controller_pb2.ModelHeader(name=name or architecture,
                                            format=controller_pb2.BUILTIN,
                                            builtin=architecture, input_shape=list(input_shape))
        return self._upload(header, b"", None)

    def _upload(self, header: controller_pb2.ModelHeader, data: bytes,
                progress: Callable[[int, int], None] | None) -> controller_pb2.ModelInfo:
        def parts() -> Iterator[controller_pb2.ModelUpload]:
            yield controller_pb2.ModelUpload(header=header)
            view = memoryview(data)
            for offset in range(0, len(data), UPLOAD_CHUNK):
                chunk = view[offset:offset + UPLOAD_CHUNK]
                yield controller_pb2.ModelUpload(chunk=bytes(chunk))
                if progress:
                    progress(offset + len(chunk), len(data))
        # Loading and profiling a big model takes a while on the controller.
        return self._call(self._stub.RegisterModel, parts(), timeout=max(self.timeout_s, 600))

    def models(self) -> list[controller_pb2.ModelInfo]:
        return list(self._call(self._stub.ListModels, controller_pb2.ListModelsRequest()).models)

    # -- fleet, plans, deployments --------------------------------------------------------

    def devices(self) -> list[controller_pb2.DeviceStatus]:
        return list(self._call(self._stub.ListDevices,
                               controller_pb2.ListDevicesRequest()).devices)

    def measure_links(self) -> list[controller_pb2.LinkStatus]:
        """Calibrate every agent-to-agent link (the planner uses them from then on)."""
        return list(self._call(self._stub.MeasureLinks, controller_pb2.MeasureLinksRequest(),
                               timeout=max(self.timeout_s, 300)).links)

    def plan(self, model: str, *, objective: str = "latency", sla_ms: float = 0.0,
             redundancy: str = "none", top_k: int = 1) -> controller_pb2.PlanReply:
        return self._call(self._stub.Plan, controller_pb2.PlanRequest(
            model=model, objective=_enum(wire.OBJECTIVE, objective), sla_ms=sla_ms,
            redundancy=_enum(wire.REDUNDANCY, redundancy), top_k=top_k))

    def deploy(self, model: str, *, name: str = "", objective: str = "latency",
               sla_ms: float = 0.0, redundancy: str = "none", plan: int = 0
               ) -> Iterator[controller_pb2.DeployProgress]:
        """Progress of the deploy as it happens; the last item has phase 'done'."""
        request = controller_pb2.DeployRequest(
            model=model, name=name, objective=_enum(wire.OBJECTIVE, objective), sla_ms=sla_ms,
            redundancy=_enum(wire.REDUNDANCY, redundancy), plan=plan)
        try:
            yield from self._stub.Deploy(request, timeout=max(self.timeout_s, 1800))
        except grpc.RpcError as exc:
            raise _api_error(exc, self.address) from None

    def deployments(self) -> list[controller_pb2.Deployment]:
        return list(self._call(self._stub.ListDeployments,
                               controller_pb2.ListDeploymentsRequest()).deployments)

    def deployment(self, name: str) -> controller_pb2.Deployment:
        return self._call(self._stub.GetDeployment, controller_pb2.GetDeploymentRequest(name=name))

    def undeploy(self, name: str) -> controller_pb2.Deployment:
        return self._call(self._stub.Undeploy, controller_pb2.UndeployRequest(name=name))

    # -- inference ------------------------------------------------------------------------

    def infer(self, deployment: str, inputs: np.ndarray | Mapping[str, np.ndarray]
              ) -> InferOutcome:
        """One request. A bare array is the input of a single-input model."""
        reply = self._call(self._stub.Infer, self._infer_call(deployment, inputs))
        return _outcome(reply)

    def infer_many(self, deployment: str,
                   batch: Iterable[np.ndarray | Mapping[str, np.ndarray]]) -> list[InferOutcome]:
        """Many requests in flight on one stream; results in the order of `batch`."""
        calls = [self._infer_call(deployment, x) for x in batch]
        by_id: dict[int, InferOutcome] = {}
        try:
            for reply in self._stub.InferStream(iter(calls), timeout=max(self.timeout_s, 600)):
                if reply.error_code:
                    raise ApiError(status_code(reply.error_code), reply.error)
                by_id[reply.request_id] = _outcome(reply)
        except grpc.RpcError as exc:
            raise _api_error(exc, self.address) from None
        return [by_id[c.request_id] for c in calls]

    def _infer_call(self, deployment: str, inputs: np.ndarray | Mapping[str, np.ndarray]
                    ) -> controller_pb2.InferCall:
        if isinstance(inputs, np.ndarray):
            inputs = {"": inputs}  # the controller binds a nameless tensor to the only input
        with self._lock:
            request_id = next(self._ids)
        try:
            encoded = tensors.encode_many(inputs)
        except tensors.TensorError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return controller_pb2.InferCall(request_id=request_id, deployment=deployment,
                                        tensors=encoded)

    # -- events ---------------------------------------------------------------------------

    def events(self, *, after_id: int = 0, follow: bool = False
               ) -> Iterator[controller_pb2.Event]:
        try:
            yield from self._stub.WatchEvents(
                controller_pb2.WatchEventsRequest(after_id=after_id, follow=follow),
                timeout=None if follow else self.timeout_s)
        except grpc.RpcError as exc:
            raise _api_error(exc, self.address) from None


def _enum(labels: wire.Labels, word: str) -> int:
    try:
        return labels.wire(word)
    except ValueError as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def _outcome(reply: controller_pb2.InferResult) -> InferOutcome:
    return InferOutcome(outputs={t.name: np.array(tensors.decode(t)) for t in reply.tensors},
                        hops=list(reply.hops), total_s=reply.total_s,
                        exited_at_stage=reply.exited_at_stage)


def _tar_directory(path: Path) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        tar.add(path, arcname=path.name)
    return buffer.getvalue()
