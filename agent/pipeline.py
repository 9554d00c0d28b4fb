"""The data path: run this agent's stage, forward to the next hop, return the answer.

Routes map (deployment, stage) to a shard and the next hop(s). A request runs its shard in
the thread that received it (a data-port connection's thread, or a worker for gRPC Infer:
LiteRT releases the GIL while it computes), then its outputs go to the next stage over one
persistent connection per next-hop address (links.py), and the thread moves on to the
next request. The answer comes back up the same connections: each agent puts its own
HopTiming in front of the ones from downstream and answers whoever sent it the request. So
the client that called the first stage gets the final output, without the controller
relaying any hop, and no agent needs to reach back to the client (NAT-friendly).

Why threads and not the event loop: a blocking thread per connection wakes once per frame
and runs a few lines of Python; the loop's wakeups, handoffs and task steps cost ~0.4 ms
more per hop here (docs/agent.md, "Measured"). The event loop keeps the control plane.

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
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format
from layerfleet.agent import dataport, files, names, transport
from layerfleet.agent.links import Link, Relayed, open_link
from layerfleet.agent.runtime import ShardInputError, ShardRunner
from layerfleet.agent.store import ShardStore, StoreError
from layerfleet.agent.stream import HopError, Reply
from layerfleet.v1 import agent_pb2

log = logging.getLogger(__name__)
ROUTES_FILE = "routes.json"

STORE_STATUS = {"data_loss": grpc.StatusCode.DATA_LOSS,
                "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
                "not_found": grpc.StatusCode.NOT_FOUND,
                "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT}


@dataclass
class Answer:
    """What goes back for one request."""

    request_id: int
    outputs: dict[str, np.ndarray] | None = None
    hops: list[agent_pb2.HopTiming] = field(default_factory=list)
    exited_at_stage: int = -1
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    # Or, relaying a data-port answer: the header to send (serialized) and the payload.
    relayed: tuple[bytes, np.ndarray | None] | None = None

    def header(self) -> agent_pb2.InferResponse:
        """The response without its tensors."""
        return agent_pb2.InferResponse(
            request_id=self.request_id, hops=self.hops, exited_at_stage=self.exited_at_stage,
            status_code=self.code.value[0], status_message=self.message)

    def decoded(self) -> Answer:
        """This answer with outputs and hops (a relayed one, decoded: for gRPC Infer)."""
        if self.relayed is None:
            return self
        header, payload = self.relayed
        message = agent_pb2.InferResponse.FromString(header)
        return Answer(self.request_id, dataport.split_payload(message, payload),
                      list(message.hops), message.exited_at_stage)


def relay(request_id: int, mine: agent_pb2.HopTiming, answer: Relayed) -> Answer:
    """The next hop's answer passed on without decoding it: its header bytes with this
    hop's timing in front and our sender's request id behind. Protobuf merges concatenated
    messages (repeated fields append, the last scalar wins), so the result parses as the
    same answer with hops [mine, *theirs] and our request id."""
    if request_id == 0:   # proto3 would not write a zero id, so theirs would stay
        return Answer(request_id, dataport.split_payload(answer.message, answer.payload),
                      [mine, *answer.message.hops], answer.message.exited_at_stage)
    header = b"".join([agent_pb2.InferResponse(hops=[mine]).SerializeToString(), answer.header,
                       agent_pb2.InferResponse(request_id=request_id).SerializeToString()])
    return Answer(request_id, relayed=(header, answer.payload))


def failed(request_id: int, exc: Exception, device_id: str) -> Answer:
    """The answer for a request that raised: its status, or INTERNAL naming this agent."""
    if isinstance(exc, HopError):
        return Answer(request_id, code=exc.code, message=exc.message)
    if isinstance(exc, StoreError):
        return Answer(request_id, code=STORE_STATUS.get(exc.kind, grpc.StatusCode.INTERNAL),
                      message=str(exc))
    log.error("request %d failed", request_id, exc_info=exc)
    return Answer(request_id, code=grpc.StatusCode.INTERNAL,
                  message=f"{device_id}: internal error: {exc}")


# A model has a few hundred layers at most, so a few stages; these bound what a route may
# claim so that forwarding to stage + 1 always fits the wire's int32.
MAX_STAGES = 4096
MAX_NEXT_HOPS = 64


def check_route(route: agent_pb2.Route) -> None:
    """A route as SetRoute may accept it, or ValueError saying what is wrong."""
    names.check_route(route.deployment)
    names.check_digest(route.shard_sha256)
    if not 0 <= route.stage < MAX_STAGES:
        raise ValueError(f"stage {route.stage} is out of range: stages are 0..{MAX_STAGES - 1}")
    if len(route.next_hops) > MAX_NEXT_HOPS:
        raise ValueError(f"{len(route.next_hops)} next hops: at most {MAX_NEXT_HOPS}")
    for address in route.next_hops:
        transport.check_address(address)
    if not 0 <= route.hedge_k <= MAX_NEXT_HOPS:
        raise ValueError(f"hedge_k {route.hedge_k} is out of range 0..{MAX_NEXT_HOPS}")
    if route.exit.enabled and not math.isfinite(route.exit.threshold):
        raise ValueError(f"exit threshold {route.exit.threshold} is not a number")


class Ticket:
    """A request this agent forwarded, waiting for the next hop's answer.

    `reply` is called exactly once: with the first good answer (a hedged request's other
    copies are then cancelled), or with the first error once every copy has failed. A
    cancelled ticket never replies. Answers arrive on the links' reader threads.
    """

    def __init__(self, request_id: int, mine: agent_pb2.HopTiming, copies: int,
                 reply: Callable[[Answer], None]) -> None:
        self.request_id = request_id
        self.mine = mine
        self.expected = copies
        self.reply = reply
        self.sent_at = time.perf_counter()
        self.copies: list[tuple[Link, object]] = []   # (link, its handle for the copy)
        self._errors: list[HopError] = []
        self._lock = threading.Lock()
        self.done = False

    def sent(self, link: Link, handle: object) -> None:
        with self._lock:
            self.copies.append((link, handle))
            late = self.done
        if late:   # a twin already answered
            link.cancel(handle)

    def answered(self, result: Reply | Relayed | HopError) -> None:
        with self._lock:
            if self.done:
                return
            if isinstance(result, HopError):
                self._errors.append(result)
                if len(self._errors) < self.expected:
                    return
                first = self._errors[0]
                answer = Answer(self.request_id, code=first.code, message=first.message)
            elif isinstance(result, Relayed):
                self.mine.forward_s = time.perf_counter() - self.sent_at
                answer = relay(self.request_id, self.mine, result)
            else:
                self.mine.forward_s = time.perf_counter() - self.sent_at
                answer = Answer(self.request_id, result.outputs, [self.mine, *result.hops],
                                result.exited_at_stage)
            self.done = True
            others = list(self.copies)
        for link, handle in others:   # the hedged twins still running
            link.cancel(handle)
        self.reply(answer)

    def cancel(self) -> None:
        """The sender gave up: drop every copy downstream, answer nothing."""
        with self._lock:
            if self.done:
                return
            self.done = True
            copies = list(self.copies)
        for link, handle in copies:
            link.cancel(handle)


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

    def run(self, sha256: str, inputs: Mapping[str, np.ndarray]
            ) -> tuple[dict[str, np.ndarray], float, float]:
        """(outputs, seconds waiting for a slot, seconds computing)."""
        queued = time.perf_counter()
        with self._slots:
            started = time.perf_counter()
            runner = self._take(sha256)
            try:
                if self.delay_s:
                    time.sleep(self.delay_s)
                outputs = runner.run(inputs)
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
        self.contracts: dict[str, ShardRunner] = {}  # for checking inputs before a slot
        self.hops: dict[str, Link] = {}   # next-hop address -> its connection, made on use
        self._hops_lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None   # the agent's; set by start()

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
        files.write_atomic(self.state_dir / ROUTES_FILE, json.dumps(data).encode())

    def set_route(self, route: agent_pb2.Route, *, persist: bool = True) -> None:
        check_route(route)
        runner = ShardRunner(self.store.load(route.shard_sha256), num_threads=1)
        if route.exit.enabled and route.exit.output_name not in {c.name for c in runner.outputs}:
            raise ValueError(f"exit output {route.exit.output_name!r} is not an output of shard "
                             f"{route.shard_sha256[:12]}: {[c.name for c in runner.outputs]}")
        self.contracts[route.shard_sha256] = runner
        self.routes[(route.deployment, route.stage)] = route
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
                           f"deployment {names.quoted(deployment)} stage {stage} is not routed on "
                           f"{self.device_id} (routes here: {', '.join(known) or 'none'})")
        return route

    def uses(self, sha256: str) -> list[str]:
        return [f"{d}/{s}" for (d, s), r in self.routes.items() if r.shard_sha256 == sha256]

    # -- requests -----------------------------------------------------------------------

    def handle(self, request_id: int, deployment: str, stage: int,
               inputs: Mapping[str, np.ndarray], reply: Callable[[Answer], None]
               ) -> Ticket | None:
        """Run this agent's stage in the calling thread and see the request through.

        `reply` gets the answer exactly once: from this thread (last stage, exit, error) or,
        when the request went on to a next hop, from that link's reader thread. Returns the
        Ticket of a forwarded request (to cancel it), else None.
        """
        try:
            route = self.route(deployment, stage)
            try:
                self.contracts[route.shard_sha256].check(inputs)
            except ShardInputError as exc:
                raise HopError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{deployment} stage {stage} on {self.device_id}: {exc}") from None
            outputs, queue_s, compute_s = self.compute.run(route.shard_sha256, inputs)
        except Exception as exc:
            reply(failed(request_id, exc, self.device_id))
            return None
        if self.on_inference is not None:
            self.on_inference(route.shard_sha256, compute_s)
        mine = agent_pb2.HopTiming(device_id=self.device_id, stage=stage, queue_s=queue_s,
                                   compute_s=compute_s)
        if route.exit.enabled and float(np.max(outputs[route.exit.output_name])) >= \
                route.exit.threshold:
            reply(Answer(request_id, outputs, [mine], exited_at_stage=stage))
            return None
        if not route.next_hops:
            reply(Answer(request_id, outputs, [mine]))
            return None
        try:
            hops = [self.hop(address) for address in route.next_hops]
        except HopError as exc:
            reply(failed(request_id, exc, self.device_id))
            return None
        if route.replica_mode == agent_pb2.HEDGED and len(hops) > 1:
            k = max(2, min(route.hedge_k or 2, len(hops)))
            chosen = sorted(hops, key=lambda h: h.outstanding)[:k]
        else:
            chosen = [min(hops, key=lambda h: h.outstanding)]
        ticket = Ticket(request_id, mine, len(chosen), reply)
        for link in chosen:
            try:
                link.send(route.deployment, stage + 1, outputs, ticket)
            except HopError as exc:
                ticket.answered(exc)
        return ticket

    def hop(self, address: str) -> Link:
        """The connection to a next hop, opened (or reopened, if it broke) on first use."""
        with self._hops_lock:
            link = self.hops.get(address)
            if link is None or not link.alive:
                assert self.loop is not None, "Pipeline.loop is set when the agent starts"
                link = self.hops[address] = open_link(
                    address, self.loop, use_data_port=self.use_data_ports,
                    chunk_bytes=self.chunk_bytes)
            return link

    async def close(self) -> None:
        with self._hops_lock:
            links, self.hops = list(self.hops.values()), {}
        for link in links:
            await link.close()
        self.compute.shutdown()
