"""Deploy: plan -> convert -> upload -> route -> activate, with progress; roll back on failure.

A deployment is recorded as `deploying` before any agent is touched and switched to `active`
in one transaction only when every stage is ready, so a controller killed in the middle
leaves a `deploying` row that `recover()` marks failed at the next start (and the agents'
routes for it are removed). Routes are set from the last stage back to the first, so no
stage ever forwards to a hop that does not know the deployment yet.

Every change to one deployment (deploy, re-plan, restore after a device returns, undeploy)
holds that deployment's lock from reading its record to writing it back: each talks to
agents in between, and two interleaved would undo each other (a restore writing back the
chain a re-plan has just retired leaves a deployment `active` with no routes anywhere).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from layerfleet.agent import names
from layerfleet.agent.client import AgentError
from layerfleet.controller import planner, wire
from layerfleet.controller.agents import AgentPool
from layerfleet.controller.errors import ApiError, not_found
from layerfleet.controller.registry import (
    DeploymentPlan,
    DeploymentRecord,
    ModelRecord,
    PlanRequest,
    Registry,
    StageRecord,
    TensorInfo,
)
from layerfleet.controller.states import Objective, Phase, Redundancy
from layerfleet.controller.tables import human_bytes
from layerfleet.v1 import controller_pb2

log = logging.getLogger(__name__)

# Share of the progress bar each phase ends at.
_PLAN, _CONVERT, _UPLOAD, _ROUTE = 0.05, 0.35, 0.85, 0.95
ACTIVE_STATES = ("deploying", "active", "degraded")


@dataclass(frozen=True, slots=True)
class DeployOrder:
    """What a Deploy call asked for, decoded from the wire (api.py)."""

    model: str
    name: str = ""                 # defaults to the model name
    objective: Objective = "latency"
    sla_ms: float = 0.0
    redundancy: Redundancy = "none"
    plan: int = 0                  # index into the planner's candidates


class StageFailure(Exception):
    def __init__(self, stage: int, device: str, address: str, action: str, error: str) -> None:
        super().__init__(f"stage {stage} on {device} ({address}): {action} failed: {error}")
        self.code = grpc.StatusCode.UNAVAILABLE


class Deployer:
    def __init__(self, registry: Registry, agents: AgentPool, deployments_dir: Path,
                 cache_dir: Path | None = None) -> None:
        self.registry = registry
        self.agents = agents
        self.deployments_dir = deployments_dir
        self.cache_dir = cache_dir
        deployments_dir.mkdir(parents=True, exist_ok=True)
        # One roll-out at a time: conversions share the CPU anyway. Taken after a
        # deployment's own lock, never before.
        self._rollout = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, name: str) -> asyncio.Lock:
        """The lock every change to deployment `name` holds (see the module docstring)."""
        return self._locks.setdefault(name, asyncio.Lock())

    async def deploy(self, req: DeployOrder) -> AsyncIterator[controller_pb2.DeployProgress]:
        model = self.registry.model(req.model)
        if model is None:
            raise not_found("model", req.model, [m.name for m in self.registry.models()])
        name = names.check_name("deployment", req.name or req.model)

        def progress(phase: Phase, message: str, fraction: float
                     ) -> controller_pb2.DeployProgress:
            return controller_pb2.DeployProgress(deployment=name, phase=wire.PHASE.wire(phase),
                                                 message=message, fraction=fraction)

        async with self.lock(name), self._rollout:
            existing = self.registry.deployment(name)
            if existing is not None and existing.state in ACTIVE_STATES:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"deployment {name} is {existing.state}: undeploy it first, "
                               f"or choose another DeployRequest.name")
            request = PlanRequest(objective=req.objective, sla_ms=req.sla_ms,
                                  redundancy=req.redundancy)
            found, _, costs = planner.candidates(
                model, self.registry.devices(), self.registry.links(),
                objective=request.objective, sla_ms=request.sla_ms,
                redundancy=request.redundancy, top_k=max(req.plan + 1, 1))
            if req.plan >= len(found):
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"plan {req.plan} does not exist: only {len(found)} candidate(s)")
            placement = found[req.plan]
            candidate = planner.candidate_pb(placement, costs)
            devices = {d.id: d for d in self.registry.devices()}
            dep = DeploymentRecord(
                name=name, model=model.name, state="deploying",
                plan=DeploymentPlan(request=request, placement=placement, candidate=candidate,
                                    route=name, considered=considered(self.registry)),
                stages=[StageRecord(name, i, s.start, s.stop, s.device, devices[s.device].address,
                                    replicas=list(s.replicas))
                        for i, s in enumerate(placement.stages)])
            self.registry.save_deployment(dep, event=(
                "deploy.started",
                f"{len(dep.stages)} stages on {', '.join(s.device for s in dep.stages)}"))
            yield progress("plan", f"{len(dep.stages)} stages, predicted "
                           f"{candidate.latency_s * 1000:.1f} ms", _PLAN)
            try:
                async for step in self._roll_out(dep, model, placement.cuts, progress):
                    yield step
            except (StageFailure, ApiError, AgentError, OSError, ValueError) as exc:
                message = str(exc)
                await self._remove_routes(dep)
                self.registry.set_deployment_state(name, "failed", message,
                                                   event=("deploy.failed", message))
                yield progress("failed", message, 1.0)
                raise ApiError(_status_of(exc),
                               f"deploy {name} failed and was rolled back: {message}") from None
            yield progress("done", f"{name} is active", 1.0)

    async def _roll_out(self, dep: DeploymentRecord, model: ModelRecord, cuts: list[int],
                        progress: Any) -> AsyncIterator[controller_pb2.DeployProgress]:
        yield progress("convert", f"splitting {model.name} at {cuts or 'no cut'}", _PLAN)
        manifest, shard_dir = await asyncio.to_thread(self._split, model, cuts, dep.route)
        yield progress("convert", f"{len(manifest.shards)} shards ready", _CONVERT)

        devices = {d.id: d for d in self.registry.devices()}
        targets = [(stage, shard, device_id)
                   for stage, shard in zip(dep.stages, manifest.shards)
                   for device_id in [stage.device, *stage.replicas]]
        total = sum(shard.size_bytes for _, shard, _ in targets) or 1
        done = 0
        for stage, shard, device_id in targets:
            address = devices[device_id].address
            data = (shard_dir / shard.file).read_bytes()
            try:
                digest = await self.agents.get(address).upload_shard(data)
            except AgentError as exc:
                raise StageFailure(stage.stage, device_id, address, "upload", exc.message) from None
            if digest != shard.sha256:
                raise StageFailure(stage.stage, device_id, address, "upload",
                                   f"agent stored sha256 {digest[:12]}, expected "
                                   f"{shard.sha256[:12]}")
            stage.shard_sha256, stage.shard_bytes = shard.sha256, shard.size_bytes
            done += shard.size_bytes
            yield progress("upload", f"stage {stage.stage} -> {device_id} "
                           f"({human_bytes(shard.size_bytes)})",
                           _CONVERT + (_UPLOAD - _CONVERT) * done / total)

        for stage in reversed(dep.stages):
            await self._set_routes(dep, stage, devices)
        yield progress("route", "routes set on every stage", _ROUTE)

        dep.state = "active"
        dep.manifest_dir = str(shard_dir)
        dep.plan = replace(dep.plan, inputs=tuple(_info(t) for t in manifest.inputs),
                           outputs=tuple(_info(t) for t in manifest.outputs))
        self.registry.save_deployment(dep, event=(
            "deploy.active", f"every stage is ready ({', '.join(s.device for s in dep.stages)})"))

    async def _set_routes(self, dep: DeploymentRecord, stage: StageRecord,
                          devices: dict[str, Any]) -> None:
        following = dep.stages[stage.stage + 1] if stage.stage + 1 < len(dep.stages) else None
        next_hops = ([following.address] + [devices[r].address for r in following.replicas]
                     if following else [])
        for device_id in [stage.device, *stage.replicas]:
            address = devices[device_id].address
            try:
                await self.agents.get(address).set_route(
                    deployment=dep.route, stage=stage.stage,
                    shard_sha256=stage.shard_sha256, next_hops=next_hops,
                    replica_mode=replica_mode(dep))
            except AgentError as exc:
                raise StageFailure(stage.stage, device_id, address, "route", exc.message) from None

    def _split(self, model: ModelRecord, cuts: list[int], name: str) -> tuple[Any, Path]:
        """Convert the segments (partitioner cache) into a fresh directory, atomically."""
        from layerfleet.controller.partition import load_model, split_model

        # The last check before anything is removed or replaced: `name` was checked at the
        # API, and must still name a direct child of the deployments directory.
        target = names.inside(self.deployments_dir, names.check_route(name))
        keras_model = load_model(model.path, input_shape=tuple(model.input_shape) or None)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.deployments_dir))
        try:
            manifest = split_model(keras_model, cuts, staging, cache_dir=self.cache_dir)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest, target

    async def replan(self, name: str, reason: str,
                     drain: Callable[[str], Awaitable[None]] | None = None) -> bool:
        """Re-plan a serving deployment and switch to the new placement without dropping
        requests: the new stages are rolled out under a new route name beside the old ones,
        the registry switches in one transaction (new requests take the new chain), requests
        in flight on the old chain drain, then the old routes are removed. If the roll-out
        fails, the old placement keeps serving. Returns whether it switched."""
        async with self.lock(name), self._rollout:
            old = self.registry.deployment(name)
            model = self.registry.model(old.model) if old else None
            if old is None or model is None or old.state not in ("active", "degraded"):
                return False
            request = old.plan.request
            try:
                found, _, costs = planner.candidates(
                    model, self.registry.devices(), self.registry.links(),
                    objective=request.objective, sla_ms=request.sla_ms,
                    redundancy=request.redundancy, top_k=1)
            except ApiError as exc:
                self.registry.add_event("replan.failed", name, exc.message)
                return False
            placement = found[0]
            if old.plan.placement is not None and placement.key() == old.plan.placement.key():
                return False
            generation = old.plan.generation + 1
            devices = {d.id: d for d in self.registry.devices()}
            new = DeploymentRecord(
                name=name, model=model.name, state="active", created_at=old.created_at,
                plan=replace(old.plan, placement=placement,
                             candidate=planner.candidate_pb(placement, costs),
                             route=f"{name}~{generation}", generation=generation,
                             considered=considered(self.registry)),
                stages=[StageRecord(name, i, s.start, s.stop, s.device, devices[s.device].address,
                                    replicas=list(s.replicas))
                        for i, s in enumerate(placement.stages)])
            self.registry.add_event("replan.started", name, reason)
            try:
                async for _ in self._roll_out(new, model, placement.cuts, _no_progress):
                    pass
            except (StageFailure, ApiError, AgentError, OSError, ValueError) as exc:
                await self._remove_routes(new)
                self.registry.add_event("replan.failed", name, str(exc))
                return False
            # _roll_out saved `new`: the switch. Let the old chain finish, then retire it.
            if drain is not None:
                await drain(old.route)
            await self._remove_routes(old)
            self.registry.add_event("replan.done", name, f"now on "
                                    f"{', '.join(s.device for s in new.stages)}")
            return True

    async def undeploy(self, name: str) -> None:
        async with self.lock(name):
            dep = self.registry.deployment(name)
            if dep is None or dep.state == "undeployed":
                return
            await self._remove_routes(dep)
            self.registry.set_deployment_state(dep.name, "undeployed",
                                               event=("deploy.undeployed", "routes removed"))

    async def _remove_routes(self, dep: DeploymentRecord) -> None:
        """Best effort: a device that is down has lost its routes already or will on restart."""
        addresses = {d.id: d.address for d in self.registry.devices()}
        for stage in dep.stages:
            for device_id in [stage.device, *stage.replicas]:
                address = addresses.get(device_id, stage.address)
                try:
                    await asyncio.wait_for(
                        self.agents.get(address).remove_route(dep.route, stage.stage), 5)
                except (AgentError, TimeoutError) as exc:
                    log.info("could not remove route %s/%d on %s: %s", dep.name, stage.stage,
                             device_id, exc)

    async def recover(self) -> None:
        """At start: a deploy the previous controller did not finish is failed and cleaned."""
        for dep in self.registry.deployments():
            if dep.state == "deploying":
                reason = "interrupted: the controller stopped during the deploy; deploy again"
                await self._remove_routes(dep)
                self.registry.set_deployment_state(dep.name, "failed", reason,
                                                   event=("deploy.failed", reason))

    async def restore_device(self, device_id: str) -> None:
        """A device came (back) up: give it back its shards and routes, and point every
        stage of its deployments at its current address (it may have a new port)."""
        for name in [d.name for d in self.registry.deployments()]:
            async with self.lock(name):
                await self._restore(name, device_id)

    async def _restore(self, name: str, device_id: str) -> None:
        # Read under the lock: a re-plan that ran meanwhile may have moved off the device.
        dep = self.registry.deployment(name)
        if dep is None or dep.state not in ("active", "degraded"):
            return
        mine = [s for s in dep.stages if device_id in (s.device, *s.replicas)]
        if not mine:
            return
        devices = {d.id: d for d in self.registry.devices()}
        client = self.agents.get(devices[device_id].address)
        try:
            held = set(await client.list_shards())
            for stage in mine:
                if stage.shard_sha256 not in held:
                    await client.upload_shard(_shard_file(dep, stage).read_bytes())
            for stage in dep.stages:
                stage.address = devices[stage.device].address
            for stage in reversed(dep.stages):
                if all(devices[d].state == "up" for d in [stage.device, *stage.replicas]):
                    await self._set_routes(dep, stage, devices)
        except (AgentError, StageFailure, OSError) as exc:
            log.warning("could not restore %s on %s: %s", dep.name, device_id, exc)
            return
        # Written from what holds now (no await from here on): a device may have gone down,
        # or the router marked the deployment, while the agents were busy.
        now = {d.id: d for d in self.registry.devices()}
        current = self.registry.deployment(name)
        if current is None:
            return
        for stage in current.stages:
            stage.address = now[stage.device].address
        everyone_up = all(now[d].state == "up"
                          for s in current.stages for d in [s.device, *s.replicas])
        if current.state == "degraded" and everyone_up:
            current.state, current.error = "active", ""
            self.registry.save_deployment(current, event=("deploy.active",
                                                          f"{device_id} is back"))
        else:
            self.registry.save_deployment(current)


def considered(registry: Registry) -> list[str]:
    """The devices a plan could use: up and calibrated (the re-planner's baseline)."""
    return sorted(d.id for d in registry.devices() if d.state == "up" and d.flops_per_s > 0)


def replica_mode(dep: DeploymentRecord) -> str:
    """Replicas race (hedged) when the plan optimised latency, else share the load."""
    return "hedged" if dep.plan.request.objective == "latency" else "balanced"


def _no_progress(phase: str, message: str, fraction: float) -> None:
    return None


def _status_of(exc: Exception) -> grpc.StatusCode:
    code = getattr(exc, "code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(exc, ValueError):  # the partitioner refused the model or the cut
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


def _shard_file(dep: DeploymentRecord, stage: StageRecord) -> Path:
    from layerfleet.controller.partition.manifest import Manifest

    manifest = Manifest.load(Path(dep.manifest_dir))
    return Path(dep.manifest_dir) / manifest.shards[stage.stage].file


def _info(t: Any) -> TensorInfo:
    return TensorInfo(t.name, t.dtype, tuple(t.shape))
