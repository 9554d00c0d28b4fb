"""The data path: run this agent's stage, forward to the next hop, return the answer.

Routes map (deployment, stage) to a shard and the next hop(s). A request runs its shard in
the thread that received it (a data-port connection's thread, or a worker for gRPC Infer:
LiteRT releases the GIL while it computes), then its outputs go to the next stage
(nexthops.Ticket: a replica chosen, retried or hedged) and the thread moves on to the next
request. The answer comes back up the same connections: each agent puts its own HopTiming
in front of the ones from downstream and answers whoever sent it the request. So the
client that called the first stage gets the final output, without the controller relaying
any hop, and no agent needs to reach back to the client (NAT-friendly).

Why threads and not the event loop: a blocking thread per connection wakes once per frame
and runs a few lines of Python; the loop's wakeups, handoffs and task steps cost ~0.3 ms
more per hop here (docs/agent.md, "Measured"). The event loop keeps the control plane.

Exits: a route may carry an exit test (max of an output >= threshold); a sample that
passes returns from here and the rest of the chain never sees it.

Precision: inputs that arrived encoded (codecs.py) are decoded to what this shard takes
before it runs; its outputs are encoded as the route's `activations` say before they go on
(an int8 shard's int8 outputs go as they are when the hop is int8). What returns to the
client is never encoded: the last stage of any model gives floats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from google.protobuf import json_format
from layerfleet.agent import answers, codecs, files, names, transport
from layerfleet.agent.answers import Answer, Outputs
from layerfleet.agent.errors import DeadlineExceeded, InvalidArgument, NotFound
from layerfleet.agent.nexthops import NextHops, Ticket
from layerfleet.agent.runtime import ShardRunner
from layerfleet.agent.store import ShardStore
from layerfleet.agent.timers import Timers
from layerfleet.v1 import agent_pb2, tensor_pb2

log = logging.getLogger(__name__)
ROUTES_FILE = "routes.json"
# A model has a few hundred layers at most, so a few stages; these bound what a route may
# claim so that forwarding to stage + 1 always fits the wire's int32.
MAX_STAGES = 4096
MAX_NEXT_HOPS = 64


def check_route(route: agent_pb2.Route) -> None:
    """A route as SetRoute may accept it, or InvalidArgument saying what is wrong."""
    names.check_route(route.deployment)
    names.check_digest(route.shard_sha256)
    if not 0 <= route.stage < MAX_STAGES:
        raise InvalidArgument(f"stage {route.stage} is out of range: stages are "
                              f"0..{MAX_STAGES - 1}")
    if len(route.next_hops) > MAX_NEXT_HOPS:
        raise InvalidArgument(f"{len(route.next_hops)} next hops: at most {MAX_NEXT_HOPS}")
    for address in route.next_hops:
        try:
            transport.check_address(address)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
    if not 0 <= route.hedge_k <= MAX_NEXT_HOPS:
        raise InvalidArgument(f"hedge_k {route.hedge_k} is out of range 0..{MAX_NEXT_HOPS}")
    if route.exit.enabled and not math.isfinite(route.exit.threshold):
        raise InvalidArgument(f"exit threshold {route.exit.threshold} is not a number")
    codecs.WireFormat.from_pb(route.activations)   # CodecError (INVALID_ARGUMENT) if unknown


class Compute:
    """Runs shards in the caller's thread, at most `workers` at a time. Interpreters are
    pooled per shard (LiteRT interpreters are not thread-safe; one per concurrent run)."""

    def __init__(self, workers: int, threads_per_run: int | None,
                 load: Callable[[str], bytes]) -> None:
        # gRPC Infer requests run here; data-port requests run in their connection's thread.
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard")
        self.threads_per_run = threads_per_run
        self._load = load
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._idle: dict[str, list[ShardRunner]] = {}
        self.delay_s = 0.0  # SetFaults: a deliberately slow device, for tests
        self.runs = 0       # shards run so far (tests count them)

    def run(self, sha256: str, inputs: Mapping[str, np.ndarray],
            still_wanted: Callable[[], None] = lambda: None
            ) -> tuple[dict[str, np.ndarray], float, float]:
        """(outputs, seconds waiting for a slot, seconds computing). `still_wanted` is
        called once a slot is free, just before the shard runs: it raises to drop a request
        that was cancelled or passed its deadline while it waited."""
        queued = time.perf_counter()
        with self._slots:
            still_wanted()
            started = time.perf_counter()
            runner = self._take(sha256)
            try:
                if self.delay_s:
                    time.sleep(self.delay_s)
                outputs = runner.run(inputs)
                self.runs += 1
            finally:
                self._give(sha256, runner)
        return outputs, started - queued, time.perf_counter() - started

    def _take(self, sha256: str) -> ShardRunner:
        with self._lock:
            idle = self._idle.setdefault(sha256, [])
            if idle:
                return idle.pop()
        return ShardRunner(self._load(sha256), num_threads=self.threads_per_run)

    def _give(self, sha256: str, runner: ShardRunner) -> None:
        with self._lock:
            if sha256 in self._idle:   # not forgotten meanwhile
                self._idle[sha256].append(runner)

    def forget(self, sha256: str) -> None:
        """Drop the interpreters of a removed shard."""
        with self._lock:
            self._idle.pop(sha256, None)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


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
        self.contracts: dict[str, ShardRunner] = {}  # for checking inputs before a slot
        self.timers = Timers()
        self.hops: NextHops | None = None   # made by start(), on the agent's event loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Next hops connect on `loop` (the agent's)."""
        self.hops = NextHops(loop, self.timers, use_data_ports=self.use_data_ports,
                             chunk_bytes=self.chunk_bytes)

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
            except Exception as exc:   # a shard gone, a rule tightened: serve the rest
                log.error("dropping saved route %s/%d: %s", route.deployment, route.stage, exc)
        self._persist()

    def _persist(self) -> None:
        data = [json_format.MessageToDict(r, preserving_proto_field_name=True)
                for r in self.routes.values()]
        files.write_atomic(self.state_dir / ROUTES_FILE, json.dumps(data).encode())

    def set_route(self, route: agent_pb2.Route, *, persist: bool = True) -> None:
        check_route(route)
        runner = ShardRunner(self.store.load(route.shard_sha256), num_threads=1)
        if route.exit.enabled and route.exit.output_name not in {c.name for c in runner.outputs}:
            raise InvalidArgument(f"exit output {route.exit.output_name!r} is not an output of "
                                  f"shard {route.shard_sha256[:12]}: "
                                  f"{[c.name for c in runner.outputs]}")
        self.contracts[route.shard_sha256] = runner
        self.routes[(route.deployment, route.stage)] = route
        if persist:
            self._persist()

    def remove_route(self, deployment: str, stage: int) -> None:
        if self.routes.pop((deployment, stage), None) is None:
            raise NotFound(f"no route for deployment {names.quoted(deployment)} stage {stage} "
                           f"here")
        self._persist()

    def route(self, deployment: str, stage: int) -> agent_pb2.Route:
        route = self.routes.get((deployment, stage))
        if route is None:
            known = sorted(f"{d}/{s}" for d, s in self.routes)
            raise NotFound(f"deployment {names.quoted(deployment)} stage {stage} is not routed "
                           f"on {self.device_id} (routes here: {', '.join(known) or 'none'})")
        return route

    def uses(self, sha256: str) -> list[str]:
        return [f"{d}/{s}" for (d, s), r in self.routes.items() if r.shard_sha256 == sha256]

    # -- requests -----------------------------------------------------------------------

    def handle(self, request_id: int, deployment: str, stage: int,
               inputs: Mapping[str, np.ndarray], reply: Callable[[Answer], None], *,
               deadline: float, still_wanted: Callable[[], None] = lambda: None,
               encoded: Mapping[str, tensor_pb2.Tensor] | None = None) -> Ticket | None:
        """Run this agent's stage in the calling thread and see the request through.

        `reply` gets the answer exactly once: from this thread (last stage, exit, error) or,
        when the request went on to a next hop, from that hop's answer. Returns the Ticket
        of a forwarded request (to cancel it), else None. `deadline` is monotonic time;
        `still_wanted` raises when the request was cancelled (see Compute.run). `encoded`:
        headers of the inputs that came with an Encoding (decoded here, before the shard).
        """
        try:
            route = self.route(deployment, stage)
            contract = self.contracts[route.shard_sha256]
            try:
                if encoded:
                    inputs = codecs.to_contract(inputs, encoded, contract.wants)
                contract.check(inputs)
            except InvalidArgument as exc:
                raise InvalidArgument(f"{deployment} stage {stage} on {self.device_id}: "
                                      f"{exc}") from None

            def wanted() -> None:
                still_wanted()
                if time.monotonic() > deadline:
                    raise DeadlineExceeded(f"{deployment} stage {stage} on {self.device_id}: "
                                           f"the request's deadline passed before it ran")

            outputs, queue_s, compute_s = self.compute.run(route.shard_sha256, inputs, wanted)
        except Exception as exc:   # its failure is its answer; the others carry on
            reply(answers.failure(request_id, exc, self.device_id))
            return None
        if self.on_inference is not None:
            self.on_inference(route.shard_sha256, compute_s)
        mine = agent_pb2.HopTiming(device_id=self.device_id, stage=stage, queue_s=queue_s,
                                   compute_s=compute_s)
        affines = contract.output_affines
        if route.exit.enabled:
            exit_output = outputs[route.exit.output_name]
            if affines.get(route.exit.output_name) is not None:
                exit_output = affines[route.exit.output_name].dequantise(exit_output)
            if float(np.max(exit_output)) >= route.exit.threshold:
                reply(Outputs(request_id, codecs.floats(outputs, affines), [mine],
                              exited_at_stage=stage))
                return None
        if not route.next_hops:
            reply(Outputs(request_id, codecs.floats(outputs, affines), [mine]))
            return None
        if route.HasField("activations") or any(affines.values()):
            outputs = codecs.encode_many(outputs, codecs.WireFormat.from_pb(route.activations),
                                         affines)
        assert self.hops is not None, "Pipeline.start() runs when the agent starts"
        hedged = route.replica_mode == agent_pb2.HEDGED and len(route.next_hops) > 1
        ticket = Ticket(self.hops, request_id, mine, deployment=route.deployment,
                        stage=stage + 1, outputs=outputs, replicas=route.next_hops,
                        hedge_k=max(2, route.hedge_k or 2) if hedged else 1,
                        deadline=deadline, reply=reply)
        ticket.start()
        return ticket

    async def close(self) -> None:
        if self.hops is not None:
            await asyncio.to_thread(self.hops.close)
        self.timers.close()
        self.compute.shutdown()

