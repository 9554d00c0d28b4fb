"""The entry point of each inference request that comes through the controller.

Inputs are checked against the deployment's first shard before anything reaches an agent
(INVALID_ARGUMENT names expected and received). The agents pass the request down the chain
and the result comes back up the same streams (docs/agent.md).

Stage 0's devices that are up are the request's replicas (`client.infer_any`, the agents'
failover rules): one that cannot be reached or stalls passes the request to another
(inference is a pure function of its input: safe to repeat). A request that still fails
with UNAVAILABLE is blamed on the stage whose device the answer names (`blame`), and the
deployment is marked degraded only when that stage has no other device up; a failure a
replica can absorb is the liveness sweep's to judge (docs/controller.md).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from layerfleet.agent.client import AgentError, infer_any
from layerfleet.controller.agents import AgentPool
from layerfleet.controller.errors import ApiError, not_found
from layerfleet.controller.observed import Observed
from layerfleet.controller.registry import DeploymentRecord, Registry, StageRecord, TensorInfo

SERVING_STATES = ("active", "degraded")


@dataclass(frozen=True, slots=True)
class HopTime:
    device: str
    stage: int
    queue_s: float
    compute_s: float
    forward_s: float


@dataclass(frozen=True, slots=True)
class Outcome:
    outputs: dict[str, np.ndarray]
    hops: list[HopTime] = field(default_factory=list)
    exited_at_stage: int = -1


def bind_inputs(inputs: Mapping[str, np.ndarray], expected: Sequence[TensorInfo]
                ) -> dict[str, np.ndarray]:
    """Match the caller's tensors to the deployment's inputs, or say exactly what is wrong.

    Names must match the deployment's inputs; a single-input model also takes one tensor
    sent without a name (a bare array). A misnamed tensor is refused, never guessed at.
    """
    if len(expected) == 1 and len(inputs) == 1 and "" in inputs:
        bound = {expected[0].name: inputs[""]}
    else:
        bound = dict(inputs)
    want = {e.name: e for e in expected}
    if set(bound) != set(want):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"expected inputs {_describe(expected)}, received "
                       f"{sorted(inputs)}")
    for name, arr in bound.items():
        spec = want[name]
        if arr.dtype.name != spec.dtype or arr.shape != spec.shape:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name}: expected {spec.dtype}{list(spec.shape)}, "
                           f"received {arr.dtype.name}{list(arr.shape)}")
    return bound


def _cut_bytes(dep: DeploymentRecord) -> list[int]:
    """Bytes into each stage per request, as planned (the activation at each cut)."""
    return [int(s.bytes_in) for s in dep.plan.candidate.stages]


def _describe(specs: Sequence[TensorInfo]) -> str:
    return ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in specs)


@dataclass(frozen=True, slots=True)
class Blame:
    """Where a request failed: its stage, and the device of that stage it could not reach."""

    stage: int
    device: str
    address: str


_ADDRESS = re.compile(r"\[[0-9A-Fa-f:.]+\]:\d+|[\w.-]+:\d+")


def blame(stages: Sequence[StageRecord], addresses: Mapping[str, str], message: str,
          entry: tuple[str, str]) -> Blame:
    """The stage an UNAVAILABLE answer is about. An agent that cannot reach its next hop
    names that hop's address ("next hop HOST:PORT ..."), and the controller's connection
    names the entry it called; `addresses` maps each device of the chain to its current
    address. A message that names no device of the chain blames `entry` (device, address),
    the hop the controller itself reached for."""
    named = set(_ADDRESS.findall(message))
    for stage in stages:
        for device in (stage.device, *stage.replicas):
            address = addresses.get(device, stage.address if device == stage.device else "")
            if address in named:
                return Blame(stage.stage, device, address)
    return Blame(0, *entry)


class Router:
    def __init__(self, registry: Registry, agents: AgentPool,
                 observed: Observed | None = None) -> None:
        self.registry = registry
        self.agents = agents
        self.observed = observed or Observed()
        self._cache: dict[str, DeploymentRecord] = {}
        self._in_flight: Counter[str] = Counter()  # by route name, for draining

    def forget(self, name: str) -> None:
        """Drop the cached deployment (after undeploy, redeploy or a state change)."""
        self._cache.pop(name, None)

    def _deployment(self, name: str) -> DeploymentRecord:
        dep = self._cache.get(name)
        if dep is None:
            dep = self.registry.deployment(name)
            if dep is None:
                raise not_found("deployment", name,
                                [d.name for d in self.registry.deployments()])
            if dep.state in SERVING_STATES:
                self._cache[name] = dep
        if dep.state not in SERVING_STATES:
            # Say what GetDeployment says: it exists, in a state that does not serve.
            hint = {"undeployed": ": deploy it again to serve it",
                    "deploying": ": wait for the deploy to finish"}.get(dep.state, "")
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"deployment {name} is {dep.state}"
                           + (f": {dep.error}" if dep.error else hint))
        return dep

    async def infer(self, name: str, inputs: Mapping[str, np.ndarray]) -> Outcome:
        dep = self._deployment(name)
        started = time.perf_counter()
        try:
            outcome = await self._infer(dep, inputs)
        except ApiError as exc:
            self.observed.failure(dep.name, exc.code.name)
            raise
        self.observed.request(dep.name, time.perf_counter() - started, outcome.hops,
                              outcome.exited_at_stage,
                              [sum(a.nbytes for a in inputs.values()), *_cut_bytes(dep)[1:]])
        return outcome

    async def _infer(self, dep: DeploymentRecord, inputs: Mapping[str, np.ndarray]) -> Outcome:
        name = dep.name
        bound = bind_inputs(inputs, dep.plan.inputs)
        entry = self._entry(dep)
        self._in_flight[dep.route] += 1
        try:
            # Stage 0's devices as replicas, by the agents' own failover rules: one that
            # cannot be reached (or stalls) passes the request to the next.
            result, _ = await infer_any([self.agents.get(a) for _, a in entry], dep.route,
                                        bound, stage=0)
        except AgentError as exc:
            if exc.code != grpc.StatusCode.UNAVAILABLE:
                raise ApiError(exc.code, f"deployment {name}: {exc.message}") from None
            where = blame(dep.stages, self._addresses(dep), exc.message, entry[0])
            tried = {device for device, _ in entry} if where.stage == 0 else set()
            reason = (f"stage {where.stage} on {where.device} ({where.address}) "
                      f"unreachable: {exc.message}")
            if not self._up(dep.stages[where.stage]) - {where.device} - tried:
                self._degrade(dep, reason)   # nothing left to serve that stage
            raise ApiError(exc.code, f"deployment {name}: {reason}") from None
        finally:
            self._in_flight[dep.route] -= 1
        return Outcome(
            outputs=dict(result.outputs),
            hops=[HopTime(h.device_id, h.stage, h.queue_s, h.compute_s, h.forward_s)
                  for h in result.hops],
            exited_at_stage=result.exited_at_stage)

    async def drain(self, route: str, timeout_s: float = 30.0) -> None:
        """Wait until no request is in flight on an old chain (new ones go to the new)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._in_flight[route] > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    def _entry(self, dep: DeploymentRecord) -> list[tuple[str, str]]:
        """Stage 0's devices that are up, as (device, address); the stage's own device
        when none is (it may be back)."""
        entry = dep.stages[0]
        if not entry.replicas:   # the common case, without a registry read
            return [(entry.device, entry.address)]
        return [(r.id, r.address) for r in map(self.registry.device, entry.devices)
                if r is not None and r.state == "up"] or [(entry.device, entry.address)]

    def _addresses(self, dep: DeploymentRecord) -> dict[str, str]:
        """Each device of the chain at its address now (a replica's is in its record)."""
        found = {}
        for stage in dep.stages:
            for device in stage.devices:
                record = self.registry.device(device)
                found[device] = record.address if record is not None else stage.address
        return found

    def _up(self, stage: StageRecord) -> set[str]:
        return {d for d in stage.devices if (r := self.registry.device(d)) is not None
                and r.state == "up"}

    def _degrade(self, dep: DeploymentRecord, reason: str) -> None:
        if dep.state == "active":
            self.registry.set_deployment_state(dep.name, "degraded", reason,
                                               event=("deploy.degraded", reason))
        self.forget(dep.name)
