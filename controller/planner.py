"""From registry rows to the placement engine's typed inputs, and its answers to the wire.

The placement engine (controller/placement) is pure; this module is the only place that
knows how a DeviceRecord becomes a placement Device and a Placement becomes a Candidate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import grpc
from layerfleet.controller import states, wire
from layerfleet.controller.errors import ApiError
from layerfleet.controller.partition.profile import ModelProfile
from layerfleet.controller.placement.model import (
    Device,
    Fleet,
    Link,
    ModelCosts,
    Placement,
    PlacementError,
)
from layerfleet.controller.placement.plan import compare_baselines, plan
from layerfleet.controller.registry import DeviceRecord, ModelRecord, Registry
from layerfleet.v1 import controller_pb2

SOURCE = "client"  # where requests enter and results return: the controller's side
# Used until a device is calibrated: a Raspberry Pi 4 runs LiteRT float32 convolutions at
# roughly this rate with 4 threads; calibration replaces it within seconds of joining.
UNCALIBRATED_FLOPS = 5e9
UNMEASURED_LINK = Link(SOURCE, "*", bandwidth_Bps=100e6 / 8, rtt_s=0.001)
FLEET_MAX_AGE_S = 10.0   # how stale the free memory a Plan call sees may be
OBJECTIVES, REDUNDANCY = states.OBJECTIVES, states.REDUNDANCY


def model_costs(record: ModelRecord) -> ModelCosts:
    return ModelCosts.from_profile(ModelProfile.from_dict(record.profile))


def fleet_from(devices: Iterable[DeviceRecord], links: Iterable[dict[str, Any]] = ()) -> Fleet:
    """The placement view of the devices that are up, with their measured links."""
    up = [d for d in devices if d.state == "up"]
    fleet_devices = [
        Device(id=d.id, flops_per_s=d.flops_per_s or UNCALIBRATED_FLOPS,
               memory_bytes=int(d.memory_available or d.memory_bytes // 2),
               idle_w=d.idle_w, busy_w=d.busy_w)
        for d in up]
    fleet_links = [Link(SOURCE, d.id, d.link_bandwidth_Bps, d.link_rtt_s)
                   for d in up if d.link_bandwidth_Bps > 0]
    ids = {d.id for d in up}
    fleet_links += [Link(l["a"], l["b"], l["bandwidth_Bps"], l["rtt_s"])
                    for l in links if l["a"] in ids and l["b"] in ids]
    # Agent-to-agent links not measured yet: assume the slowest measured controller link
    # (agents on one LAN are rarely slower than their path to the controller).
    measured = [l for l in fleet_links if l.a == SOURCE]
    default = (Link("*", "*", min(l.bandwidth_Bps for l in measured),
                    max(l.rtt_s for l in measured)) if measured else UNMEASURED_LINK)
    return Fleet(devices=fleet_devices, links=fleet_links, source=SOURCE, default_link=default)


class FleetCache:
    """The placement view of the fleet for Plan calls, rebuilt only when a row it depends
    on changed (Registry.changes: devices, links) or when older than max_age_s (free
    memory comes with heartbeats and is not counted as a change). Reading and converting
    10,000 device rows takes ~0.1 s; a Plan of a small model should take milliseconds."""

    def __init__(self, registry: Registry, max_age_s: float = FLEET_MAX_AGE_S) -> None:
        self.registry = registry
        self.max_age_s = max_age_s
        self._fleet: Fleet | None = None
        self._seen = -1
        self._built_at = 0.0

    def fleet(self) -> Fleet:
        now = time.monotonic()
        if self._fleet is None or self._seen != self.registry.changes \
                or now - self._built_at > self.max_age_s:
            self._seen = self.registry.changes
            self._fleet = fleet_from(self.registry.devices_up(), self.registry.links())
            self._built_at = now
        return self._fleet


def candidates(record: ModelRecord, devices: Iterable[DeviceRecord],
               links: Iterable[dict[str, Any]], *, objective: str, sla_ms: float,
               redundancy: str, top_k: int) -> tuple[list[Placement], dict[str, Placement | None],
                                                     ModelCosts]:
    return candidates_on(record, fleet_from(devices, links), objective=objective,
                         sla_ms=sla_ms, redundancy=redundancy, top_k=top_k)


def candidates_on(record: ModelRecord, fleet: Fleet, *, objective: str, sla_ms: float,
                  redundancy: str, top_k: int
                  ) -> tuple[list[Placement], dict[str, Placement | None], ModelCosts]:
    if objective not in OBJECTIVES:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if redundancy not in REDUNDANCY:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"redundancy {redundancy!r}: choose one of {', '.join(REDUNDANCY)}")
    if objective == "energy" and sla_ms <= 0:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "objective energy needs a latency SLA: set sla_ms, in milliseconds")
    if not fleet.devices:
        raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                       "no device is up: start an agent (layerfleet-agent) or check "
                       "`layerfleet devices`")
    costs = model_costs(record)
    sla_s = sla_ms / 1000 if sla_ms > 0 else None
    baselines = compare_baselines(costs, fleet, objective, sla_s)
    try:
        found = plan(costs, fleet, objective=objective, sla_s=sla_s, redundancy=redundancy,
                     top_k=max(1, top_k), baselines=baselines)
    except PlacementError as exc:
        raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                       f"model {record.name!r} cannot be placed: {exc}") from None
    # The reply shows the baselines as a user would run them: without the SLA.
    shown = baselines if sla_s is None else compare_baselines(costs, fleet, objective)
    return found, shown, costs


def candidate_pb(placement: Placement, costs: ModelCosts) -> controller_pb2.Candidate:
    pred = placement.prediction
    stages = []
    for stage, sp in zip(placement.stages, pred.stages):
        stages.append(controller_pb2.StagePlan(
            start=stage.start, stop=stage.stop, device=stage.device,
            replicas=list(stage.replicas), compute_s=sp.compute_s,
            transfer_in_s=sp.transfer_in_s, memory_bytes=int(sp.memory_bytes),
            energy_j=sp.energy_j, bytes_in=int(costs.cut_bytes[stage.start]),
            first_layer=costs.layer_names[stage.start],
            last_layer=costs.layer_names[stage.stop - 1]))
    links = [controller_pb2.LinkUse(src=str(src), dst=str(dst), bytes=int(nbytes),
                                    seconds=float(sec)) for src, dst, nbytes, sec in pred.links]
    return controller_pb2.Candidate(
        strategy=placement.strategy, objective=wire.OBJECTIVE.wire(placement.objective),
        latency_s=pred.latency_s,
        throughput_rps=pred.throughput_rps, energy_j=pred.energy_j, stages=stages, links=links)
