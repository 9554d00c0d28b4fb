"""The Agent gRPC servicer: decode, call the store or the pipeline, encode.

Errors are StatusErrors (errors.py) and become their status here, with a message a person
can act on; nothing ends the agent. On the Infer stream a failed request is answered with
its own status fields, so the other requests on the same stream carry on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import platform
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
import psutil
from layerfleet import __version__
from layerfleet.agent import answers, runtime, tensors, transport, wire
from layerfleet.agent.answers import Answer, Failure
from layerfleet.agent.budget import Budget
from layerfleet.agent.energy import board_name
from layerfleet.agent.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    StatusError,
)
from layerfleet.agent.pipeline import Pipeline
from layerfleet.agent.session import Session
from layerfleet.agent.store import ShardStore
from layerfleet.agent.telemetry import Telemetry
from layerfleet.v1 import agent_pb2, agent_pb2_grpc, tensor_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")
# A sender that stops halfway through an upload or a chunked request is cut off after
# this long without a chunk, and what it had sent is released.
STALL_S = 10.0


def _specs(contracts: tuple[runtime.TensorContract, ...]) -> list[tensor_pb2.TensorSpec]:
    return [tensor_pb2.TensorSpec(name=c.name, dtype=tensors.dtype_code(c.dtype),
                                  shape=list(c.shape)) for c in contracts]


def runtime_label() -> str:
    from importlib.metadata import PackageNotFoundError, version

    name = runtime.backend_name()
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return name


def _statuses(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """A unary RPC whose StatusErrors become its status."""
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except StatusError as exc:
            await context.abort(exc.code, exc.message)
        raise AssertionError("unreachable")
    return wrapper


class _Inbox(Generic[T]):
    """A client stream's messages, read by one task and taken with an optional timeout
    (waiting on a queue can time out safely; a gRPC read cannot be abandoned halfway)."""

    _END: Any = object()

    def __init__(self, iterator: AsyncIterator[T]) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)
        self._ended = False
        self._task = asyncio.create_task(self._pump(iterator))

    async def _pump(self, iterator: AsyncIterator[T]) -> None:
        try:
            async for message in iterator:
                await self._queue.put(message)
        except grpc.RpcError:
            pass   # the sender went away: the end of its stream
        finally:
            self._ended = True
            if not self._queue.full():   # (when full, next() sees _ended once it empties)
                self._queue.put_nowait(self._END)

    async def next(self, timeout_s: float | None = None) -> T:
        """The next message; StopAsyncIteration at the end, TimeoutError past `timeout_s`."""
        if self._ended and self._queue.empty():
            raise StopAsyncIteration
        message = await asyncio.wait_for(self._queue.get(), timeout_s)
        if message is self._END:
            raise StopAsyncIteration
        return message

    def close(self) -> None:
        self._task.cancel()


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, store: ShardStore, pipeline: Pipeline, telemetry: Telemetry, *,
                 device_id: str, address: str, budget: Budget, allow_faults: bool = False,
                 data_port: int = 0, max_request_bytes: int | None = None) -> None:
        self.store = store
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.device_id = device_id
        self.address = address
        self.budget = budget
        self.allow_faults = allow_faults
        self.data_port = data_port
        self.max_request_bytes = max_request_bytes
        self.uploads_started = 0

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

    @_statuses
    async def UploadShard(self, request_iterator: AsyncIterator[agent_pb2.ShardChunk],
                          context: grpc.aio.ServicerContext) -> agent_pb2.ShardInfo:
        chunks = _Inbox(request_iterator)
        try:
            return await self._upload(chunks)
        finally:
            chunks.close()

    async def _upload(self, chunks: _Inbox[agent_pb2.ShardChunk]) -> agent_pb2.ShardInfo:
        try:
            first = await chunks.next(STALL_S)
        except StopAsyncIteration:
            raise InvalidArgument("empty upload: the first chunk must carry sha256 and "
                                  "size") from None
        except TimeoutError:
            raise DeadlineExceeded(f"upload sent nothing for {STALL_S:.0f} s") from None
        upload = self.store.upload(first.sha256, first.size_bytes)  # refused before the bytes
        self.uploads_started += 1   # main.py gives memory back after a burst of them
        try:
            chunk = first
            while True:
                if chunk.data:
                    await asyncio.to_thread(upload.write, chunk.data)
                try:
                    chunk = await chunks.next(STALL_S)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise DeadlineExceeded(f"upload of shard {first.sha256[:12]} stalled: no "
                                           f"chunk for {STALL_S:.0f} s after {upload.received} "
                                           f"of {upload.size} bytes; nothing stored") from None
            await asyncio.to_thread(upload.commit)
        finally:
            upload.discard()
        try:
            runner = runtime.ShardRunner(self.store.load(first.sha256), num_threads=1)
        except ValueError as exc:  # not a flatbuffer LiteRT can load
            self.store.remove(first.sha256)
            raise InvalidArgument(f"shard {first.sha256[:12]} is not a loadable LiteRT model: "
                                  f"{exc}") from None
        return agent_pb2.ShardInfo(sha256=first.sha256, size_bytes=first.size_bytes,
                                   inputs=_specs(runner.inputs), outputs=_specs(runner.outputs))

    @_statuses
    async def ListShards(self, request: agent_pb2.ListShardsRequest,
                         context: grpc.aio.ServicerContext) -> agent_pb2.ListShardsReply:
        shards = [agent_pb2.ShardInfo(sha256=d, size_bytes=self.store.path(d).stat().st_size)
                  for d in self.store.digests()]
        return agent_pb2.ListShardsReply(shards=shards, quota_bytes=self.store.quota_bytes,
                                         used_bytes=self.store.used_bytes())

    @_statuses
    async def RemoveShard(self, request: agent_pb2.RemoveShardRequest,
                          context: grpc.aio.ServicerContext) -> agent_pb2.RemoveShardReply:
        users = self.pipeline.uses(request.sha256)
        if users:
            raise FailedPrecondition(f"shard {request.sha256[:12]} is used by routes "
                                     f"{', '.join(users)}: remove those first")
        self.store.remove(request.sha256)
        self.pipeline.compute.forget(request.sha256)
        return agent_pb2.RemoveShardReply()

    # -- routes ---------------------------------------------------------------------------

    @_statuses
    async def SetRoute(self, request: agent_pb2.Route,
                       context: grpc.aio.ServicerContext) -> agent_pb2.RouteAck:
        self.pipeline.set_route(request)
        return agent_pb2.RouteAck()

    @_statuses
    async def RemoveRoute(self, request: agent_pb2.RemoveRouteRequest,
                          context: grpc.aio.ServicerContext) -> agent_pb2.RouteAck:
        self.pipeline.remove_route(request.deployment, request.stage)
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
            result = answers.decoded(answer)
            if isinstance(result, Failure):
                outbox.put_nowait(answers.header(result))
                return
            for message in wire.responses(result.request_id, result.outputs, result.hops,
                                          exited_at_stage=result.exited_at_stage):
                outbox.put_nowait(message)

        # Answers come from worker and next-hop threads; the stream is the loop's.
        session = Session(self.pipeline, lambda a: loop.call_soon_threadsafe(enqueue, a),
                          budget=self.budget)
        assembler = wire.Assembler(self.max_request_bytes, self.budget)

        def take(message: agent_pb2.InferRequest) -> None:
            if message.cancel:
                assembler.drop(message.request_id)
                session.cancel(message.request_id)
                return
            try:   # a request that cannot be read fails alone; its other chunks skipped
                done = assembler.add(message)
            except StatusError as exc:
                session.refuse(message.request_id, exc)
                return
            except Exception:   # a bug must not end the stream for the others
                log.exception("could not read request %d", message.request_id)
                session.refuse(message.request_id, StatusError(
                    grpc.StatusCode.INTERNAL, "could not read this request; see the agent's "
                                              "log"))
                return
            if done is not None:
                session.submit(message.request_id, done.first.deployment, done.first.stage,
                               done.arrays, timeout_s=done.first.timeout_s,
                               held_bytes=done.held_bytes, encoded=done.encoded)

        async def read() -> None:
            messages = _Inbox(request_iterator)
            try:
                while True:
                    try:   # while a chunked request is half here, wait only so long
                        message = await messages.next(STALL_S if assembler.pending else None)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        for request_id in assembler.expire(STALL_S):
                            session.refuse(request_id, DeadlineExceeded(
                                f"request {request_id} stalled: no chunk for {STALL_S:.0f} s"))
                        continue
                    take(message)
                while not await asyncio.to_thread(session.wait_idle, 1.0):
                    pass
            finally:
                messages.close()
                assembler.close()
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
        interval = request.interval_s if math.isfinite(request.interval_s) else 0.0
        interval = min(max(interval or 1.0, 0.1), 3600.0)
        while True:
            yield self.sample()
            await asyncio.sleep(interval)

    @_statuses
    async def Benchmark(self, request: agent_pb2.BenchmarkRequest,
                        context: grpc.aio.ServicerContext) -> agent_pb2.BenchmarkReply:
        from layerfleet.agent import calibration

        runs = min(max(request.runs or 5, 1), 100)
        seconds, flops = await calibration.measure(runs, self.pipeline.compute.threads_per_run,
                                                   request.precision or "fp32")
        return agent_pb2.BenchmarkReply(flops_per_s=flops / seconds, seconds_per_run=seconds,
                                        flops_per_run=flops)

    async def Echo(self, request_iterator: AsyncIterator[agent_pb2.Blob],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.Blob]:
        async for blob in request_iterator:
            yield blob

    @_statuses
    async def MeasureLink(self, request: agent_pb2.MeasureLinkRequest,
                          context: grpc.aio.ServicerContext) -> agent_pb2.LinkReply:
        from layerfleet.agent.client import AgentClient, probe_link

        try:
            transport.check_address(request.address)
        except ValueError as exc:
            raise InvalidArgument(f"MeasureLink: {exc}") from None
        nbytes = min(max(request.bytes or (4 << 20), 1 << 10), 64 << 20)
        try:
            async with AgentClient(request.address, timeout_s=30) as other:
                bandwidth, rtt = await probe_link(other, nbytes)
        except StatusError as exc:
            raise StatusError(grpc.StatusCode.UNAVAILABLE,
                              f"{self.device_id} cannot reach {request.address}: "
                              f"{exc.message}") from None
        return agent_pb2.LinkReply(bandwidth_bytes_per_s=bandwidth, rtt_s=rtt)

    async def SetFaults(self, request: agent_pb2.Faults,
                        context: grpc.aio.ServicerContext) -> agent_pb2.Faults:
        if not self.allow_faults:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "fault injection is off: start the agent with --allow-faults")
        if not 0 <= request.delay_ms <= 3_600_000:   # also refuses NaN
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "delay_ms must be 0..3600000")
        self.pipeline.compute.delay_s = request.delay_ms / 1000
        return request
