"""The Controller gRPC servicer: decode, call the part that decides, encode.

Every error a caller sees is an ApiError turned into a status here; anything else is a bug,
logged with its traceback and reported as INTERNAL without taking the daemon down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from layerfleet.agent import names, tensors
from layerfleet.controller import planner, wire
from layerfleet.controller.catalog import Catalog, check_header, check_upload
from layerfleet.controller.deployer import Deployer, DeployOrder
from layerfleet.controller.errors import ApiError, not_found
from layerfleet.controller.events import EventBus
from layerfleet.controller.registry import (
    DeploymentRecord,
    DeviceRecord,
    ModelRecord,
    Registry,
    TensorInfo,
)
from layerfleet.controller.router import Router
from layerfleet.controller.states import stage_state
from layerfleet.v1 import controller_pb2, controller_pb2_grpc, tensor_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_MODEL_BYTES = 2 << 30
MAX_CANDIDATES = 100   # top_k, and the plan index a deploy picks
MAX_SLA_MS = 3_600_000.0


def _unary(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except ApiError as exc:
            await context.abort(exc.code, exc.message)
        except names.InvalidName as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"{method.__name__} failed inside the controller; "
                                "see its log")
        raise AssertionError("unreachable")
    return wrapper


def _streaming(method: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[T]:
        try:
            async for item in method(self, request, context):
                yield item
        except ApiError as exc:
            await context.abort(exc.code, exc.message)
        except names.InvalidName as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"{method.__name__} failed inside the controller; "
                                "see its log")
    return wrapper


class ControllerService(controller_pb2_grpc.ControllerServicer):
    def __init__(self, registry: Registry, catalog: Catalog, deployer: Deployer,
                 router: Router, events: EventBus) -> None:
        self.registry = registry
        self.catalog = catalog
        self.deployer = deployer
        self.router = router
        self.events = events
        self.fleet = planner.FleetCache(registry)

    # -- models -------------------------------------------------------------------------

    @_unary
    async def RegisterModel(self, request_iterator: AsyncIterator[controller_pb2.ModelUpload],
                            context: grpc.aio.ServicerContext) -> controller_pb2.ModelInfo:
        header: controller_pb2.ModelHeader | None = None
        chunks: list[bytes] = []
        size = 0
        async for part in request_iterator:
            if part.HasField("header"):
                if header is not None:
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "model upload has two headers")
                check_header(part.header)
                header = part.header
            else:
                if header is None:
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "model upload must start with its header")
                size += len(part.chunk)
                if size > max(header.size_bytes, 0) or size > MAX_MODEL_BYTES:
                    raise ApiError(grpc.StatusCode.DATA_LOSS,
                                   f"upload longer than the declared {header.size_bytes} "
                                   "bytes; nothing was registered")
                chunks.append(part.chunk)
        if header is None:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "empty model upload")
        record = await self.catalog.register(check_upload(header, b"".join(chunks)))
        self.events.notify()
        return model_pb(record)

    @_unary
    async def ListModels(self, request: controller_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> controller_pb2.ListModelsReply:
        return controller_pb2.ListModelsReply(models=[model_pb(m) for m in self.registry.models()])

    # -- devices ------------------------------------------------------------------------

    @_unary
    async def ListDevices(self, request: controller_pb2.ListDevicesRequest,
                          context: grpc.aio.ServicerContext) -> controller_pb2.ListDevicesReply:
        return controller_pb2.ListDevicesReply(
            devices=[device_pb(d) for d in self.registry.devices()])

    @_unary
    async def MeasureLinks(self, request: controller_pb2.MeasureLinksRequest,
                           context: grpc.aio.ServicerContext) -> controller_pb2.MeasureLinksReply:
        from layerfleet.controller.calibrate import measure_links

        found = await measure_links(self.registry, self.deployer.agents)
        return controller_pb2.MeasureLinksReply(links=[
            controller_pb2.LinkStatus(a=a, b=b, bandwidth_bytes_per_s=bw, rtt_s=rtt, error=error)
            for a, b, bw, rtt, error in found])

    # -- planning and deployments ---------------------------------------------------------

    @_unary
    async def Plan(self, request: controller_pb2.PlanRequest,
                   context: grpc.aio.ServicerContext) -> controller_pb2.PlanReply:
        _refuse_old_fields(request)
        check_plan_request(request.sla_ms, request.top_k)
        record = self._model(request.model)
        found, baselines, costs = planner.candidates_on(
            record, self.fleet.fleet(),
            objective=wire.OBJECTIVE.word(request.objective, "latency"), sla_ms=request.sla_ms,
            redundancy=wire.REDUNDANCY.word(request.redundancy, "none"),
            top_k=request.top_k or 1)
        return controller_pb2.PlanReply(
            candidates=[planner.candidate_pb(p, costs) for p in found],
            baselines=[planner.candidate_pb(p, costs) for p in baselines.values() if p])

    @_streaming
    async def Deploy(self, request: controller_pb2.DeployRequest,
                     context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[controller_pb2.DeployProgress]:
        _refuse_old_fields(request)
        check_plan_request(request.sla_ms, request.plan)
        self._model(request.model)
        order = DeployOrder(
            model=request.model, name=request.name,
            objective=wire.OBJECTIVE.word(request.objective, "latency"),  # type: ignore[arg-type]
            sla_ms=request.sla_ms,
            redundancy=wire.REDUNDANCY.word(request.redundancy, "none"),  # type: ignore[arg-type]
            plan=request.plan)
        async for progress in self.deployer.deploy(order):
            self.events.notify()
            yield progress

    @_unary
    async def ListDeployments(self, request: controller_pb2.ListDeploymentsRequest,
                              context: grpc.aio.ServicerContext
                              ) -> controller_pb2.ListDeploymentsReply:
        return controller_pb2.ListDeploymentsReply(
            deployments=[self._deployment_pb(d) for d in self.registry.deployments()])

    @_unary
    async def GetDeployment(self, request: controller_pb2.GetDeploymentRequest,
                            context: grpc.aio.ServicerContext) -> controller_pb2.Deployment:
        return self._deployment_pb(self._deployment(request.name))

    @_unary
    async def Undeploy(self, request: controller_pb2.UndeployRequest,
                       context: grpc.aio.ServicerContext) -> controller_pb2.Deployment:
        dep = self._deployment(request.name)
        await self.deployer.undeploy(dep.name)
        self.router.forget(dep.name)
        self.events.notify()
        return self._deployment_pb(self._deployment(request.name))

    # -- inference ------------------------------------------------------------------------

    @_unary
    async def Infer(self, request: controller_pb2.InferCall,
                    context: grpc.aio.ServicerContext) -> controller_pb2.InferResult:
        return await self._infer(request)

    async def InferStream(self, request_iterator: AsyncIterator[controller_pb2.InferCall],
                          context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[controller_pb2.InferResult]:
        # Requests run concurrently; a failed request answers with its own error fields and
        # the stream carries on for the others.
        results: asyncio.Queue[controller_pb2.InferResult | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def one(call: controller_pb2.InferCall) -> None:
            try:
                result = await self._infer(call)
            except (ApiError, names.InvalidName) as exc:
                code = exc.code if isinstance(exc, ApiError) else \
                    grpc.StatusCode.INVALID_ARGUMENT
                result = controller_pb2.InferResult(request_id=call.request_id,
                                                    error_code=code.value[0], error=str(exc))
            except Exception:  # a bug: keep the stream alive for the other requests
                log.exception("inference %s failed", call.request_id)
                result = controller_pb2.InferResult(
                    request_id=call.request_id, error_code=grpc.StatusCode.INTERNAL.value[0],
                    error="inference failed inside the controller; see its log")
            await results.put(result)

        async def read() -> None:
            async for call in request_iterator:
                task = asyncio.create_task(one(call))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(set(pending))
            await results.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await results.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def _infer(self, call: controller_pb2.InferCall) -> controller_pb2.InferResult:
        started = time.perf_counter()
        try:
            inputs = tensors.decode_many(call.tensors)
        except tensors.TensorError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        outcome = await self.router.infer(names.check_name("deployment", call.deployment),
                                          inputs)
        return controller_pb2.InferResult(
            request_id=call.request_id,
            tensors=[tensors.encode(n, a) for n, a in outcome.outputs.items()],
            hops=[controller_pb2.Hop(device=h.device, stage=h.stage, queue_s=h.queue_s,
                                     compute_s=h.compute_s, forward_s=h.forward_s)
                  for h in outcome.hops],
            total_s=time.perf_counter() - started, exited_at_stage=outcome.exited_at_stage)

    # -- events ---------------------------------------------------------------------------

    async def WatchEvents(self, request: controller_pb2.WatchEventsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[controller_pb2.Event]:
        after, seen = request.after_id, self.events.version
        while True:
            for e in self.registry.events(after_id=after):
                after = e.id
                yield controller_pb2.Event(id=e.id, time=e.time, kind=e.kind,
                                           subject=e.subject, message=e.message)
            if not request.follow:
                return
            seen = await self.events.wait(timeout=1.0, seen=seen)

    # -- lookups --------------------------------------------------------------------------

    def _deployment_pb(self, dep: DeploymentRecord) -> controller_pb2.Deployment:
        return deployment_pb(dep, self.registry.device_states([s.device for s in dep.stages]))

    def _model(self, name: str) -> ModelRecord:
        record = self.registry.model(names.check_name("model", name))
        if record is None:
            raise not_found("model", name, [m.name for m in self.registry.models()])
        return record

    def _deployment(self, name: str) -> DeploymentRecord:
        dep = self.registry.deployment(names.check_name("deployment", name))
        if dep is None:
            raise not_found("deployment", name,
                            [d.name for d in self.registry.deployments()])
        return dep


def _refuse_old_fields(request: Any) -> None:
    """A client built from the pre-0.2 .proto sends objective/redundancy as strings at their
    old numbers: say so, rather than plan with the defaults it did not ask for."""
    old = wire.old_fields(request)
    if old:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{request.DESCRIPTOR.name} sent {', '.join(old)} as the old string "
                       f"field(s); since layerfleet 0.2 they are enums (Objective, Redundancy) "
                       f"at new field numbers: rebuild the client from the current "
                       f"controller.proto")


def check_plan_request(sla_ms: float, count: int) -> None:
    """Numbers a Plan or Deploy request carries: an SLA in milliseconds (0: none) and a
    candidate count or index."""
    if not (math.isfinite(sla_ms) and 0 <= sla_ms <= MAX_SLA_MS):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"sla_ms {sla_ms} must be 0 (none) or a latency up to {MAX_SLA_MS:.0f} ms")
    if not 0 <= count < MAX_CANDIDATES:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"candidate {count} is out of range 0..{MAX_CANDIDATES - 1}")


# -- record -> message ----------------------------------------------------------------------

def _specs(items: Sequence[dict[str, Any] | TensorInfo]) -> list[tensor_pb2.TensorSpec]:
    out = []
    for t in items:
        name, dtype, shape = ((t["name"], t["dtype"], t["shape"]) if isinstance(t, dict)
                              else (t.name, t.dtype, t.shape))
        try:
            code = tensors.dtype_code(dtype)
        except tensors.TensorError:
            code = tensor_pb2.DTYPE_UNSPECIFIED
        out.append(tensor_pb2.TensorSpec(name=name, dtype=code, shape=list(shape)))
    return out


def model_pb(m: ModelRecord) -> controller_pb2.ModelInfo:
    return controller_pb2.ModelInfo(
        name=m.name, digest=m.digest, source=m.source, layers=m.layers, flops=m.flops,
        param_bytes=m.param_bytes, inputs=_specs(m.inputs), outputs=_specs(m.outputs),
        created_at=m.created_at)


def device_pb(d: DeviceRecord) -> controller_pb2.DeviceStatus:
    return controller_pb2.DeviceStatus(
        id=d.id, address=d.address, hostname=d.hostname, arch=d.arch, cores=d.cores,
        memory_bytes=d.memory_bytes, runtime=d.runtime, version=d.version,
        state=wire.DEVICE_STATE.wire(d.state), found_by=wire.FOUND_BY.wire(d.found_by),
        flops_per_s=d.flops_per_s,
        link_bandwidth_bytes_per_s=d.link_bandwidth_Bps,
        link_rtt_s=d.link_rtt_s, last_seen=d.last_seen, power_w=d.power_w,
        energy_method=d.energy_method, cpu_percent=d.cpu_percent,
        memory_available=d.memory_available, temperature_c=d.temperature_c,
        joules_total=d.joules_total)


def deployment_pb(d: DeploymentRecord, device_states: dict[str, str]
                  ) -> controller_pb2.Deployment:
    return controller_pb2.Deployment(
        name=d.name, model=d.model, state=wire.DEPLOYMENT_STATE.wire(d.state), error=d.error,
        stages=[controller_pb2.StageStatus(
            stage=s.stage, start=s.start, stop=s.stop, device=s.device, address=s.address,
            replicas=s.replicas, shard_sha256=s.shard_sha256, shard_bytes=s.shard_bytes,
            state=wire.STAGE_STATE.wire(stage_state(s.device, device_states)))
            for s in d.stages],
        plan=d.plan.candidate, inputs=_specs(d.plan.inputs), outputs=_specs(d.plan.outputs),
        created_at=d.created_at, updated_at=d.updated_at)
