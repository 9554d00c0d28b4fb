"""The Agent gRPC servicer: decode, call the store or the pipeline, encode.

Errors become statuses a person can act on (INVALID_ARGUMENT names expected and received,
NOT_FOUND, DATA_LOSS, UNAVAILABLE naming the hop, RESOURCE_EXHAUSTED), and never end the
agent. On the Infer stream a failed request is answered with its own status fields, so the
other requests on the same stream carry on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
from collections.abc import AsyncIterator

import grpc
import psutil
from layerfleet import __version__
from layerfleet.agent import runtime, tensors, wire
from layerfleet.agent.energy import board_name
from layerfleet.agent.pipeline import STORE_STATUS, Answer, Pipeline
from layerfleet.agent.session import Session
from layerfleet.agent.store import ShardStore, StoreError
from layerfleet.agent.telemetry import Telemetry
from layerfleet.v1 import agent_pb2, agent_pb2_grpc, tensor_pb2

log = logging.getLogger(__name__)


def _specs(contracts: tuple[runtime.TensorContract, ...]) -> list[tensor_pb2.TensorSpec]:
    return [tensor_pb2.TensorSpec(name=c.name, dtype=tensors.dtype_code(c.dtype),
                                  shape=list(c.shape)) for c in contracts]


def runtime_label() -> str:
    from importlib.metadata import PackageNotFoundError, version

    name, _ = runtime.backend()
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return name


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, store: ShardStore, pipeline: Pipeline, telemetry: Telemetry, *,
                 device_id: str, address: str, allow_faults: bool = False,
                 data_port: int = 0, max_request_bytes: int | None = None) -> None:
        self.store = store
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.device_id = device_id
        self.address = address
        self.allow_faults = allow_faults
        self.data_port = data_port
        self.max_request_bytes = max_request_bytes

    async def _abort(self, context: grpc.aio.ServicerContext, exc: StoreError) -> None:
        await context.abort(STORE_STATUS.get(exc.kind, grpc.StatusCode.INTERNAL), str(exc))

    # -- description ----------------------------------------------------------------------

    def describe(self) -> agent_pb2.DeviceInfo:
        return agent_pb2.DeviceInfo(
            device_id=self.device_id, hostname=socket.gethostname(), arch=platform.machine(),
            cores=os.cpu_count() or 1, memory_bytes=psutil.virtual_memory().total,
            runtime=runtime_label(), version=__version__, shards=self.store.digests(),
            routes=list(self.pipeline.routes.values()), address=self.address,
            board=board_name(), data_port=self.data_port)

    async def Describe(self, request: agent_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext) -> agent_pb2.DeviceInfo:
        return self.describe()

    # -- shards ---------------------------------------------------------------------------

    async def UploadShard(self, request_iterator: AsyncIterator[agent_pb2.ShardChunk],
                          context: grpc.aio.ServicerContext) -> agent_pb2.ShardInfo:
        sha256, size, chunks, received = "", 0, [], 0
        try:
            async for chunk in request_iterator:
                if not sha256:
                    sha256, size = chunk.sha256, chunk.size_bytes
                    self.store.reserve(sha256, size)  # refuse before receiving the bytes
                received += len(chunk.data)
                if received > size:
                    raise _too_long(size)
                if chunk.data:
                    chunks.append(chunk.data)
            if not sha256:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "empty upload: the first chunk must carry sha256 and size")
            await asyncio.to_thread(self.store.put, sha256, size, chunks)
            runner = runtime.ShardRunner(self.store.load(sha256), num_threads=1)
        except StoreError as exc:
            await self._abort(context, exc)
        except ValueError as exc:  # not a flatbuffer LiteRT can load
            self.store.remove(sha256)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"shard {sha256[:12]} is not a loadable LiteRT model: {exc}")
        return agent_pb2.ShardInfo(sha256=sha256, size_bytes=size, inputs=_specs(runner.inputs),
                                   outputs=_specs(runner.outputs))

    async def ListShards(self, request: agent_pb2.ListShardsRequest,
                         context: grpc.aio.ServicerContext) -> agent_pb2.ListShardsReply:
        shards = [agent_pb2.ShardInfo(sha256=d, size_bytes=self.store.path(d).stat().st_size)
                  for d in self.store.digests()]
        return agent_pb2.ListShardsReply(shards=shards, quota_bytes=self.store.quota_bytes,
                                         used_bytes=self.store.used_bytes())

    async def RemoveShard(self, request: agent_pb2.RemoveShardRequest,
                          context: grpc.aio.ServicerContext) -> agent_pb2.RemoveShardReply:
        users = self.pipeline.uses(request.sha256)
        if users:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"shard {request.sha256[:12]} is used by routes "
                                f"{', '.join(users)}: remove those first")
        try:
            self.store.remove(request.sha256)
        except StoreError as exc:
            await self._abort(context, exc)
        self.pipeline.compute.forget(request.sha256)
        return agent_pb2.RemoveShardReply()

    # -- routes ---------------------------------------------------------------------------

    async def SetRoute(self, request: agent_pb2.Route,
                       context: grpc.aio.ServicerContext) -> agent_pb2.RouteAck:
        try:
            self.pipeline.set_route(request)
        except StoreError as exc:
            await self._abort(context, exc)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return agent_pb2.RouteAck()

    async def RemoveRoute(self, request: agent_pb2.RemoveRouteRequest,
                          context: grpc.aio.ServicerContext) -> agent_pb2.RouteAck:
        try:
            self.pipeline.remove_route(request.deployment, request.stage)
        except KeyError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        return agent_pb2.RouteAck()

    async def ListRoutes(self, request: agent_pb2.ListRoutesRequest,
                         context: grpc.aio.ServicerContext) -> agent_pb2.ListRoutesReply:
        return agent_pb2.ListRoutesReply(routes=list(self.pipeline.routes.values()))

    # -- inference ------------------------------------------------------------------------

    async def Infer(self, request_iterator: AsyncIterator[agent_pb2.InferRequest],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.InferResponse]:
        outbox: asyncio.Queue[agent_pb2.InferResponse | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def enqueue(answer: Answer) -> None:
            answer = answer.decoded()
            for message in wire.responses(answer.request_id, answer.outputs, answer.hops,
                                          exited_at_stage=answer.exited_at_stage,
                                          status_code=answer.code.value[0],
                                          status_message=answer.message):
                outbox.put_nowait(message)

        # Answers come from worker and link threads; the stream is the loop's.
        session = Session(self.pipeline, lambda a: loop.call_soon_threadsafe(enqueue, a))
        assembler = wire.Assembler(self.max_request_bytes)

        async def read() -> None:
            try:
                async for message in request_iterator:
                    if message.cancel:
                        assembler.drop(message.request_id)
                        session.cancel(message.request_id)
                        continue
                    try:
                        done = assembler.add(message)
                    except wire.RequestTooLarge as exc:   # its other chunks are skipped
                        session.refuse(message.request_id, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       str(exc))
                        continue
                    except tensors.TensorError as exc:
                        assembler.drop(message.request_id)
                        session.refuse(message.request_id, grpc.StatusCode.INVALID_ARGUMENT,
                                       str(exc))
                        continue
                    if done is not None:
                        first, inputs = done
                        session.submit(message.request_id, first.deployment, first.stage,
                                       inputs)
                while not await asyncio.to_thread(session.wait_idle, 1.0):
                    pass
            finally:
                outbox.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await outbox.get()) is not None:
                yield response
        finally:
            reader.cancel()
            session.close()

    # -- telemetry and calibration --------------------------------------------------------

    def sample(self) -> agent_pb2.TelemetrySample:
        snap = self.telemetry.sample()
        shards = [agent_pb2.ShardStats(sha256=sha, count=s.count,
                                       joules_per_inference=s.joules_per_inference,
                                       p50_s=s.quantile(0.5), p90_s=s.quantile(0.9),
                                       p99_s=s.quantile(0.99))
                  for sha, s in self.telemetry.shards.items()]
        return agent_pb2.TelemetrySample(
            time=snap.time, cpu_percent_per_core=snap.cpu_percent_per_core, load1=snap.load1,
            load5=snap.load5, load15=snap.load15, memory_total=snap.memory_total,
            memory_available=snap.memory_available, agent_rss=snap.agent_rss,
            temperature_c=snap.temperature_c if snap.temperature_c is not None else float("nan"),
            power_w=snap.power_w, energy_method=snap.energy_method,
            joules_total=snap.joules_total, shards=shards)

    async def Telemetry(self, request: agent_pb2.TelemetryRequest,
                        context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[agent_pb2.TelemetrySample]:
        interval = max(request.interval_s or 1.0, 0.1)
        while True:
            yield self.sample()
            await asyncio.sleep(interval)

    async def Benchmark(self, request: agent_pb2.BenchmarkRequest,
                        context: grpc.aio.ServicerContext) -> agent_pb2.BenchmarkReply:
        from layerfleet.agent import calibration

        runs = min(max(request.runs or 5, 1), 100)
        seconds, flops = await asyncio.to_thread(calibration.run, runs,
                                                 self.pipeline.compute.threads_per_run)
        return agent_pb2.BenchmarkReply(flops_per_s=flops / seconds, seconds_per_run=seconds,
                                        flops_per_run=flops)

    async def Echo(self, request_iterator: AsyncIterator[agent_pb2.Blob],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.Blob]:
        async for blob in request_iterator:
            yield blob

    async def MeasureLink(self, request: agent_pb2.MeasureLinkRequest,
                          context: grpc.aio.ServicerContext) -> agent_pb2.LinkReply:
        from layerfleet.agent.client import AgentClient, AgentError, probe_link

        if not request.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "MeasureLink needs an address")
        nbytes = min(max(request.bytes or (4 << 20), 1 << 10), 64 << 20)
        try:
            async with AgentClient(request.address, timeout_s=30) as other:
                bandwidth, rtt = await probe_link(other, nbytes)
        except AgentError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{self.device_id} cannot reach {request.address}: "
                                f"{exc.message}")
        return agent_pb2.LinkReply(bandwidth_bytes_per_s=bandwidth, rtt_s=rtt)

    async def SetFaults(self, request: agent_pb2.Faults,
                        context: grpc.aio.ServicerContext) -> agent_pb2.Faults:
        if not self.allow_faults:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "fault injection is off: start the agent with --allow-faults")
        if request.delay_ms < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "delay_ms must be >= 0")
        self.pipeline.compute.delay_s = request.delay_ms / 1000
        return request


def _too_long(size: int) -> StoreError:
    from layerfleet.agent.store import DigestMismatch

    return DigestMismatch(f"upload longer than the declared {size} bytes; nothing stored")
