"""The entry point of each inference request that comes through the controller.

Inputs are checked against the deployment's first shard before anything reaches an agent
(INVALID_ARGUMENT names expected and received). The request goes to the stage-0 device, or
to the replica with the fewest requests outstanding; the agents pass it down the chain and
the result comes back up the same streams (docs/agent.md). A dead entry hop marks the
deployment degraded and the caller gets UNAVAILABLE naming the device.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np
from layerfleet.agent.client import AgentError
from layerfleet.controller.agents import AgentPool
from layerfleet.controller.errors import ApiError, not_found
from layerfleet.controller.observed import Observed
from layerfleet.controller.registry import DeploymentRecord, Registry

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


def bind_inputs(inputs: Mapping[str, np.ndarray], expected: list[dict]) -> dict[str, np.ndarray]:
    """Match the caller's tensors to the deployment's inputs, or say exactly what is wrong.

    Names must match the deployment's inputs; a single-input model also takes one tensor
    sent without a name (a bare array). A misnamed tensor is refused, never guessed at.
    """
    if len(expected) == 1 and len(inputs) == 1 and "" in inputs:
        bound = {expected[0]["name"]: inputs[""]}
    else:
        bound = dict(inputs)
    want = {e["name"]: e for e in expected}
    if set(bound) != set(want):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"expected inputs {_describe(expected)}, received "
                       f"{sorted(inputs)}")
    for name, arr in bound.items():
        spec = want[name]
        if arr.dtype.name != spec["dtype"] or list(arr.shape) != list(spec["shape"]):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name}: expected {spec['dtype']}{list(spec['shape'])}, "
                           f"received {arr.dtype.name}{list(arr.shape)}")
    return bound


def _cut_bytes(dep: DeploymentRecord) -> list[int]:
    """Bytes into each stage per request, as planned (the activation at each cut)."""
    stages = dep.plan.get("candidate", {}).get("stages", [])
    return [int(s.get("bytes_in", 0)) for s in stages]  # int64 is a string in proto JSON


def _describe(specs: list[dict]) -> str:
    return ", ".join(f"{s['name']} {s['dtype']}{list(s['shape'])}" for s in specs)


class Router:
    def __init__(self, registry: Registry, agents: AgentPool,
                 observed: Observed | None = None) -> None:
        self.registry = registry
        self.agents = agents
        self.observed = observed or Observed()
        self._cache: dict[str, DeploymentRecord] = {}
        self._outstanding: Counter[str] = Counter()
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
        bound = bind_inputs(inputs, dep.plan.get("inputs", []))
        device, address = self._entry(dep)
        route = str(dep.plan.get("route", dep.name))
        self._outstanding[address] += 1
        self._in_flight[route] += 1
        try:
            result = await self.agents.get(address).infer(route, bound, stage=0)
        except AgentError as exc:
            if exc.code == grpc.StatusCode.UNAVAILABLE:
                self._degrade(dep, f"stage 0 on {device} ({address}) unreachable: {exc.message}")
            raise ApiError(exc.code, f"deployment {name}: {exc.message}") from None
        finally:
            self._outstanding[address] -= 1
            self._in_flight[route] -= 1
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

    def _entry(self, dep: DeploymentRecord) -> tuple[str, str]:
        """The stage-0 device to use: the up replica with the fewest requests outstanding."""
        entry = dep.stages[0]
        choices = [(entry.device, entry.address)]
        for replica in entry.replicas:
            record = self.registry.device(replica)
            if record is not None and record.state == "up":
                choices.append((replica, record.address))
        return min(choices, key=lambda c: self._outstanding[c[1]])

    def _degrade(self, dep: DeploymentRecord, reason: str) -> None:
        if dep.state == "active":
            self.registry.set_deployment_state(dep.name, "degraded", reason,
                                               event=("deploy.degraded", reason))
        self.forget(dep.name)
