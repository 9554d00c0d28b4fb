"""AgentClient: the asyncio client of one agent (used by the controller, tests, benchmarks).

All inference goes over one persistent multiplexed connection (stream.py): the agent's
data port (raw TCP) when it has one, else a gRPC Infer stream. Errors come back as
StatusError (errors.py) with the agent's status code and message.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from layerfleet.agent import codecs, failover, transport
from layerfleet.agent.answers import Outputs
from layerfleet.agent.errors import DeadlineExceeded, StatusError
from layerfleet.agent.stream import DEFAULT_TIMEOUT_S, InferStream
from layerfleet.v1 import agent_pb2, agent_pb2_grpc

UPLOAD_CHUNK = 1 << 20
# The name callers of this client have used for its errors: the one StatusError.
AgentError = StatusError


def _wrap(exc: grpc.aio.AioRpcError, address: str) -> StatusError:
    details = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        details = f"agent {address} unavailable: {details}"
    return StatusError(exc.code(), details)


class AgentClient:
    def __init__(self, address: str, *, timeout_s: float = 30.0,
                 use_data_port: bool = True) -> None:
        self.address = address
        self.timeout_s = timeout_s
        # What failover (infer_any) knows of this agent as a replica.
        self.failed_at = -1e9
        self.stalled_at = -1e9
        self.round_trip_s = 0.0
        self._channel = transport.channel(address)
        self._stub = agent_pb2_grpc.AgentStub(self._channel)
        # Inference over the agent's data port when it offers one (stream.py).
        self._stream = InferStream(address, channel=self._channel, use_data_port=use_data_port)

    async def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout or self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _wrap(exc, self.address) from None

    async def describe(self) -> agent_pb2.DeviceInfo:
        return await self._unary(self._stub.Describe, agent_pb2.DescribeRequest())

    async def upload_shard(self, data: bytes, *,
                           progress: Callable[[int, int], None] | None = None) -> str:
        sha256 = hashlib.sha256(data).hexdigest()

        async def chunks():
            view = memoryview(data)
            yield agent_pb2.ShardChunk(sha256=sha256, size_bytes=len(data))
            for offset in range(0, len(data), UPLOAD_CHUNK):
                yield agent_pb2.ShardChunk(data=bytes(view[offset:offset + UPLOAD_CHUNK]))
                if progress:
                    progress(min(offset + UPLOAD_CHUNK, len(data)), len(data))

        info = await self._unary(self._stub.UploadShard, chunks(), timeout=600)
        return info.sha256

    async def list_shards(self) -> list[str]:
        reply = await self._unary(self._stub.ListShards, agent_pb2.ListShardsRequest())
        return [s.sha256 for s in reply.shards]

    async def remove_shard(self, sha256: str) -> None:
        await self._unary(self._stub.RemoveShard, agent_pb2.RemoveShardRequest(sha256=sha256))

    async def set_route(self, *, deployment: str, stage: int, shard_sha256: str,
                        next_hops: list[str] = (), replica_mode: str = "balanced",
                        hedge_k: int = 2, exit_output: str = "",
                        exit_threshold: float = 0.0, activations: str = "",
                        precision: str = "") -> None:
        """`activations`: how this stage's outputs travel on ("int8", "fp16+lz4"; empty:
        float32 as computed, codecs.py); `precision`: the shard's, for status."""
        route = agent_pb2.Route(
            deployment=deployment, stage=stage, shard_sha256=shard_sha256,
            next_hops=list(next_hops), hedge_k=hedge_k,
            replica_mode=agent_pb2.HEDGED if replica_mode == "hedged" else agent_pb2.BALANCED,
            exit=agent_pb2.ExitConfig(enabled=bool(exit_output), output_name=exit_output,
                                      threshold=exit_threshold), precision=precision)
        if activations:
            route.activations.CopyFrom(codecs.WireFormat.parse(activations).to_pb())
        await self._unary(self._stub.SetRoute, route)

    async def remove_route(self, deployment: str, stage: int) -> None:
        await self._unary(self._stub.RemoveRoute,
                          agent_pb2.RemoveRouteRequest(deployment=deployment, stage=stage))

    async def list_routes(self) -> list[agent_pb2.Route]:
        return list((await self._unary(self._stub.ListRoutes,
                                       agent_pb2.ListRoutesRequest())).routes)

    @property
    def transport(self) -> str:
        """How inference reaches the agent: 'dataport', 'grpc', or '' before the first call."""
        return self._stream.carrier

    async def infer(self, deployment: str, inputs: Mapping[str, np.ndarray], *,
                    stage: int = 0, timeout_s: float = DEFAULT_TIMEOUT_S) -> Outputs:
        """The deployment's answer for `inputs` entering at `stage`; StatusError for a
        failure, DEADLINE_EXCEEDED past `timeout_s` (every hop drops it then too)."""
        return await self._stream.infer(deployment, stage, inputs, timeout_s=timeout_s)

    def replica(self) -> failover.Replica:
        return failover.Replica(self.address, self._stream.outstanding, self.failed_at,
                                self.stalled_at, self.round_trip_s)

    async def benchmark(self, runs: int = 5, precision: str = "fp32"
                        ) -> agent_pb2.BenchmarkReply:
        return await self._unary(self._stub.Benchmark,
                                 agent_pb2.BenchmarkRequest(runs=runs, precision=precision),
                                 timeout=120)

    async def echo(self, nbytes: int) -> float:
        """Seconds to send nbytes and get them back (1 MiB messages)."""
        payload = bytes(min(nbytes, UPLOAD_CHUNK))
        count = max(nbytes // len(payload), 1)

        async def blobs():
            for _ in range(count):
                yield agent_pb2.Blob(data=payload)

        started = time.perf_counter()
        try:
            async for _ in self._stub.Echo(blobs(), timeout=self.timeout_s):
                pass
        except grpc.aio.AioRpcError as exc:
            raise _wrap(exc, self.address) from None
        return time.perf_counter() - started

    async def measure_link(self, address: str, nbytes: int = 4 << 20) -> tuple[float, float]:
        """Ask this agent to time its link to the agent at `address`: (B/s, round trip s)."""
        reply = await self._unary(self._stub.MeasureLink, agent_pb2.MeasureLinkRequest(
            address=address, bytes=nbytes), timeout=60)
        return reply.bandwidth_bytes_per_s, reply.rtt_s

    async def set_faults(self, delay_ms: float) -> None:
        await self._unary(self._stub.SetFaults, agent_pb2.Faults(delay_ms=delay_ms))

    async def telemetry(self, interval_s: float = 1.0):
        try:
            async for sample in self._stub.Telemetry(
                    agent_pb2.TelemetryRequest(interval_s=interval_s)):
                yield sample
        except grpc.aio.AioRpcError as exc:
            raise _wrap(exc, self.address) from None

    async def close(self) -> None:
        await self._stream.close()
        await self._channel.close()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()


async def infer_any(replicas: Sequence[AgentClient], deployment: str,
                    inputs: Mapping[str, np.ndarray], *, stage: int = 0,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Outputs, AgentClient]:
    """One request to whichever of several agents serving the same stage answers it,
    following failover.py's rules (the asyncio twin of nexthops.Ticket): a copy that fails
    retryably goes to a replica not tried yet, a copy that stalls gets a twin, the first
    good answer wins and the others are cancelled. Returns the answer and who gave it;
    StatusError when every replica failed, DEADLINE_EXCEEDED past `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    by_address = {r.address: r for r in replicas}
    tried: set[str] = set()
    failures: list[tuple[grpc.StatusCode, str]] = []
    running: dict[asyncio.Task[Outputs], AgentClient] = {}

    async def ask(client: AgentClient) -> Outputs:
        started = loop.time()
        answer = await client.infer(deployment, inputs, stage=stage,
                                    timeout_s=max(deadline - started, 1e-3))
        client.round_trip_s = failover.round_trip(client.round_trip_s, loop.time() - started)
        client.stalled_at = -1e9
        return answer

    def launch() -> AgentClient | None:
        ranked = failover.order([r.replica() for r in replicas], tried, time.monotonic())
        if not ranked:
            return None
        client = by_address[ranked[0].address]
        tried.add(client.address)
        running[asyncio.ensure_future(ask(client))] = client
        return client

    latest = launch()
    try:
        while running:
            remaining = deadline - loop.time()
            wait_s = remaining
            if latest is not None and len(tried) < len(replicas):
                wait_s = min(wait_s, failover.hedge_after_s(latest.replica()))
            done, _ = await asyncio.wait(running, timeout=max(wait_s, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                if deadline - loop.time() <= 0:
                    break
                for client in running.values():   # stalled: a twin goes elsewhere
                    client.stalled_at = time.monotonic()
                latest = launch() or latest
                continue
            for task in done:
                client = running.pop(task)
                error = task.exception()
                if error is None:
                    return task.result(), client
                if not isinstance(error, StatusError):
                    raise error
                failures.append((error.code, error.message))
                if error.code == grpc.StatusCode.UNAVAILABLE:
                    client.failed_at = time.monotonic()
                if failover.retryable(error.code):
                    latest = launch() or latest
        found = failover.verdict(failures)
        if found is None or deadline - loop.time() <= 0:
            raise DeadlineExceeded(f"{deployment} stage {stage}: no answer from "
                                   f"{', '.join(sorted(tried))} within {timeout_s:g} s")
        raise StatusError(*found)
    finally:
        for task in running:
            task.cancel()


async def probe_link(client: AgentClient, nbytes: int = 4 << 20, pings: int = 7
                     ) -> tuple[float, float]:
    """(bandwidth B/s, round trip s) from this process to the agent behind `client`: the
    median of small calls, then one echoed payload (moved both ways) minus a round trip."""
    rtts = []
    for _ in range(pings):
        started = time.perf_counter()
        await client.describe()
        rtts.append(time.perf_counter() - started)
    rtt = sorted(rtts)[len(rtts) // 2]
    seconds = await client.echo(nbytes)
    return 2 * nbytes / max(seconds - rtt, 1e-6), rtt


async def wait_serving(address: str, timeout_s: float = 10.0) -> None:
    """Until the agent's health check says SERVING (raises TimeoutError)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = asyncio.get_running_loop().time() + timeout_s
    async with transport.channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"agent {address} not serving after {timeout_s} s")
            await asyncio.sleep(0.05)
