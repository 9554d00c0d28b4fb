"""The data path: run this agent's stage, forward to the next hop, return the answer.

Routes map (deployment, stage) to a shard and the next hop(s). A request runs its shard in
a worker thread (LiteRT releases the GIL while it computes), then all outputs go to the
next stage over one persistent stream per next-hop address (stream.py). The answer comes
back up the same streams: each agent puts its own HopTiming in front of the ones from
downstream and answers whoever sent it the request. So the client that called the first
stage gets the final output, without the controller relaying any hop, and no agent needs
to reach back to the client (NAT-friendly).

Exits: a route may carry an exit test (max of a probability output >= threshold); a sample
that passes returns from here and the rest of the chain never sees it.
Replicas: a stage with several next hops spreads requests over them (BALANCED: least
outstanding) or sends each request to hedge_k of them and keeps the first answer (HEDGED),
cancelling the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format
from layerfleet.agent.runtime import ShardInputError, ShardRunner
from layerfleet.agent.store import ShardStore
from layerfleet.agent.stream import HopError, InferStream, Reply
from layerfleet.v1 import agent_pb2

log = logging.getLogger(__name__)
ROUTES_FILE = "routes.json"


@dataclass
class Outcome:
    outputs: dict[str, np.ndarray]
    hops: list[agent_pb2.HopTiming]
    exited_at_stage: int = -1


class Compute:
    """A pool of worker threads, each with its own interpreter per shard (LiteRT
    interpreters are not thread-safe; one per thread avoids locks on the hot path)."""

    def __init__(self, workers: int, threads_per_run: int | None,
                 load: Callable[[str], bytes]) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard")
        self.threads_per_run = threads_per_run
        self._load = load
        self._local = threading.local()
        self.delay_s = 0.0  # SetFaults: a deliberately slow device, for tests

    def runner(self, sha256: str) -> ShardRunner:
        runners: dict[str, ShardRunner] = self._local.__dict__.setdefault("runners", {})
        runner = runners.get(sha256)
        if runner is None:
            runner = runners[sha256] = ShardRunner(self._load(sha256),
                                                   num_threads=self.threads_per_run)
        return runner

    def _run(self, sha256: str, inputs: Mapping[str, np.ndarray], queued_at: float
             ) -> tuple[dict[str, np.ndarray], float, float]:
        started = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        outputs = self.runner(sha256).run(inputs)
        return outputs, started - queued_at, time.perf_counter() - started

    async def run(self, sha256: str, inputs: Mapping[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], float, float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._run, sha256, inputs,
                                          time.perf_counter())

    def forget(self, sha256: str) -> None:
        """Drop cached interpreters for a removed shard (each thread drops its own lazily)."""
        runners = self._local.__dict__.get("runners", {})
        runners.pop(sha256, None)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)


class Pipeline:
    def __init__(self, store: ShardStore, state_dir: Path, device_id: str, *,
                 workers: int = 1, threads_per_run: int | None = None,
                 on_inference: Callable[[str, float], None] | None = None,
                 chunk_bytes: int | None = None, use_data_ports: bool = True) -> None:
        self.store = store
        self.state_dir = state_dir
        self.device_id = device_id
        self.compute = Compute(workers, threads_per_run, store.load)
        self.on_inference = on_inference
        self.chunk_bytes = chunk_bytes
        self.use_data_ports = use_data_ports   # reach next hops on their data ports
        self.routes: dict[tuple[str, int], agent_pb2.Route] = {}
        self.contracts: dict[str, ShardRunner] = {}  # for checking inputs on the event loop
        self.hops: dict[str, InferStream] = {}
        self.in_flight = 0

    # -- routes -------------------------------------------------------------------------

    def restore_routes(self) -> None:
        """Routes survive a restart (the shards are on disk), so the chain serves at once."""
        path = self.state_dir / ROUTES_FILE
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except ValueError:
            log.error("%s is corrupt; starting without routes", path)
            return
        for item in saved:
            route = json_format.ParseDict(item, agent_pb2.Route())
            try:
                self.set_route(route, persist=False)
            except Exception as exc:
                log.error("dropping saved route %s/%d: %s", route.deployment, route.stage, exc)
        self._persist()

    def _persist(self) -> None:
        data = [json_format.MessageToDict(r, preserving_proto_field_name=True)
                for r in self.routes.values()]
        fd, tmp = tempfile.mkstemp(prefix=".routes-", dir=self.state_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_dir / ROUTES_FILE)

    def set_route(self, route: agent_pb2.Route, *, persist: bool = True) -> None:
        if not route.deployment:
            raise ValueError("a route needs a deployment name")
        runner = ShardRunner(self.store.load(route.shard_sha256), num_threads=1)
        if route.exit.enabled and route.exit.output_name not in {c.name for c in runner.outputs}:
            raise ValueError(f"exit output {route.exit.output_name!r} is not an output of shard "
                             f"{route.shard_sha256[:12]}: {[c.name for c in runner.outputs]}")
        self.contracts[route.shard_sha256] = runner
        self.routes[(route.deployment, route.stage)] = route
        for address in route.next_hops:
            if address not in self.hops:
                self.hops[address] = InferStream(address, use_data_port=self.use_data_ports, **(
                    {"chunk_bytes": self.chunk_bytes} if self.chunk_bytes else {}))
        if persist:
            self._persist()

    def remove_route(self, deployment: str, stage: int) -> None:
        if self.routes.pop((deployment, stage), None) is None:
            raise KeyError(f"no route for deployment {deployment!r} stage {stage} here")
        self._persist()

    def route(self, deployment: str, stage: int) -> agent_pb2.Route:
        route = self.routes.get((deployment, stage))
        if route is None:
            known = sorted(f"{d}/{s}" for d, s in self.routes)
            raise HopError(grpc.StatusCode.NOT_FOUND,
                           f"deployment {deployment!r} stage {stage} is not routed on "
                           f"{self.device_id} (routes here: {', '.join(known) or 'none'})")
        return route

    def uses(self, sha256: str) -> list[str]:
        return [f"{d}/{s}" for (d, s), r in self.routes.items() if r.shard_sha256 == sha256]

    # -- requests -----------------------------------------------------------------------

    async def handle(self, deployment: str, stage: int, inputs: Mapping[str, np.ndarray]
                     ) -> Outcome:
        route = self.route(deployment, stage)
        try:
            self.contracts[route.shard_sha256].check(inputs)
        except ShardInputError as exc:
            raise HopError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{deployment} stage {stage} on {self.device_id}: {exc}") from None
        self.in_flight += 1
        try:
            outputs, queue_s, compute_s = await self.compute.run(route.shard_sha256, inputs)
        finally:
            self.in_flight -= 1
        if self.on_inference is not None:
            self.on_inference(route.shard_sha256, compute_s)
        mine = agent_pb2.HopTiming(device_id=self.device_id, stage=stage, queue_s=queue_s,
                                   compute_s=compute_s)
        if route.exit.enabled and float(np.max(outputs[route.exit.output_name])) >= \
                route.exit.threshold:
            return Outcome(outputs, [mine], exited_at_stage=stage)
        if not route.next_hops:
            return Outcome(outputs, [mine])
        sent = time.perf_counter()
        reply = await self._forward(route, outputs)
        mine.forward_s = time.perf_counter() - sent
        return Outcome(reply.outputs, [mine, *reply.hops], reply.exited_at_stage)

    async def _forward(self, route: agent_pb2.Route, outputs: dict[str, np.ndarray]) -> Reply:
        hops = [self.hops[a] for a in route.next_hops]
        following = route.stage + 1
        if route.replica_mode == agent_pb2.HEDGED and len(hops) > 1:
            k = max(2, min(route.hedge_k or 2, len(hops)))
            chosen = sorted(hops, key=lambda h: h.outstanding)[:k]
            return await _first_answer([h.infer(route.deployment, following, outputs)
                                        for h in chosen])
        hop = min(hops, key=lambda h: h.outstanding)
        return await hop.infer(route.deployment, following, outputs)

    async def close(self) -> None:
        for hop in self.hops.values():
            await hop.close()
        self.compute.shutdown()


async def _first_answer(calls: list) -> Reply:
    """The first successful reply; the others are cancelled (their hops drop the work)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    errors: list[BaseException] = []
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                return await next_done
            except HopError as exc:
                errors.append(exc)
        raise errors[0]
    finally:
        for task in tasks:
            task.cancel()
