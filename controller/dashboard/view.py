"""What the dashboard page shows, as one JSON-ready dict built from the registry and from
what the router observed. Pure: records in, plain data out (no aiohttp here).

Every number keeps its base unit in its key (`_s`, `_bytes`, `_w`, `_j`), like the wire
messages; the page formats them.
"""

from __future__ import annotations

import time
from typing import Any

from layerfleet import __version__
from layerfleet.controller import planner, wire
from layerfleet.controller.observed import DeploymentSeen, Observed, StageSeen
from layerfleet.controller.registry import (
    DeploymentRecord,
    DeviceRecord,
    EventRecord,
    ModelRecord,
    Registry,
)
from layerfleet.controller.states import stage_state


def fleet_view(registry: Registry, observed: Observed, *, controller: str = "",
               now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    devices = registry.devices()
    states = {d.id: d.state for d in devices}
    return {
        "controller": {"address": controller, "version": __version__, "time": now},
        "devices": [device_view(d, now) for d in devices],
        "links": [{"a": link["a"], "b": link["b"], "bandwidth_bytes_per_s": link["bandwidth_Bps"],
                   "rtt_s": link["rtt_s"], "measured_at": link["measured_at"]}
                  for link in registry.links()],
        "deployments": [deployment_view(d, states, observed.of(d.name))
                        for d in registry.deployments()],
        "models": [model_view(m) for m in registry.models()],
        "choices": {"objectives": list(planner.OBJECTIVES),
                    "redundancy": list(planner.REDUNDANCY)},
    }


def device_view(d: DeviceRecord, now: float) -> dict[str, Any]:
    return {
        "id": d.id, "address": d.address, "hostname": d.hostname, "state": d.state,
        "found_by": d.found_by, "arch": d.arch, "cores": d.cores, "runtime": d.runtime,
        "version": d.version, "cpu_ratio": d.cpu_percent / 100.0,
        "memory_bytes": d.memory_bytes, "memory_available_bytes": d.memory_available,
        "temperature_c": d.temperature_c, "power_w": d.power_w,
        "energy_method": d.energy_method, "joules_total": d.joules_total,
        "flops_per_s": d.flops_per_s, "link_bandwidth_bytes_per_s": d.link_bandwidth_Bps,
        "link_rtt_s": d.link_rtt_s,
        "last_seen_ago_s": max(now - d.last_seen, 0.0) if d.last_seen else None,
    }


def model_view(m: ModelRecord) -> dict[str, Any]:
    return {"name": m.name, "source": m.source, "layers": m.layers, "flops": m.flops,
            "param_bytes": m.param_bytes}


def deployment_view(dep: DeploymentRecord, device_states: dict[str, str],
                    seen: DeploymentSeen | None) -> dict[str, Any]:
    candidate = dep.plan.to_json()["candidate"]   # the planned numbers, as proto JSON
    planned = candidate.get("stages", [])
    stages = []
    for stage in dep.stages:
        plan = planned[stage.stage] if stage.stage < len(planned) else {}
        devices = [stage.device, *stage.replicas]
        stages.append({
            "stage": stage.stage, "start": stage.start, "stop": stage.stop,
            "first_layer": plan.get("first_layer", ""), "last_layer": plan.get("last_layer", ""),
            "device": stage.device, "replicas": list(stage.replicas),
            "state": stage_state(stage.device, device_states),
            "devices_down": [d for d in devices if device_states.get(d) != "up"],
            "shard_bytes": stage.shard_bytes,
            "exit": plan.get("exit"),  # planned early exit, once the planner places them
            "predicted": {"compute_s": float(plan.get("compute_s", 0.0)),
                          "transfer_in_s": float(plan.get("transfer_in_s", 0.0)),
                          "bytes_in": int(plan.get("bytes_in", 0)),
                          "energy_j": float(plan.get("energy_j", 0.0))},
            "measured": _stage_seen(seen.stages.get(stage.stage) if seen else None),
        })
    return {
        "name": dep.name, "model": dep.model, "state": dep.state, "error": dep.error,
        "updated_at": dep.updated_at,
        "predicted": {"strategy": candidate.get("strategy", ""),
                      "objective": _objective_word(candidate.get("objective", "")),
                      "latency_s": float(candidate.get("latency_s", 0.0)),
                      "throughput_rps": float(candidate.get("throughput_rps", 0.0)),
                      "energy_j": float(candidate.get("energy_j", 0.0))},
        "measured": _deployment_seen(seen),
        "stages": stages,
    }


def _deployment_seen(seen: DeploymentSeen | None) -> dict[str, Any]:
    if seen is None:
        return {"requests": 0, "errors": 0, "errors_by_code": {}, "latency_p50_s": None,
                "latency_p90_s": None, "latency_mean_s": None, "rate_rps": 0.0}
    return {"requests": seen.requests, "errors": sum(seen.errors.values()),
            "errors_by_code": dict(seen.errors), "latency_p50_s": seen.latency_s.quantile(0.5),
            "latency_p90_s": seen.latency_s.quantile(0.9), "latency_mean_s": seen.latency_s.mean(),
            "rate_rps": seen.rate_rps(time.monotonic())}


def _stage_seen(seen: StageSeen | None) -> dict[str, Any]:
    if seen is None:
        return {"reached": 0, "exits": 0, "bytes_in_total": 0, "compute_mean_s": None,
                "queue_mean_s": None, "link_in_mean_s": None, "by_device": {}}
    return {"reached": seen.reached, "exits": seen.exits, "bytes_in_total": seen.bytes_in,
            "compute_mean_s": seen.compute_s.mean(), "queue_mean_s": seen.queue_s.mean(),
            "link_in_mean_s": seen.link_in_s.mean(), "by_device": dict(seen.devices)}


def event_view(e: EventRecord) -> dict[str, Any]:
    return {"id": e.id, "time": e.time, "kind": e.kind, "subject": e.subject,
            "message": e.message}


def _objective_word(value: str) -> str:
    """'OBJECTIVE_THROUGHPUT' (proto JSON) or 'throughput' (rows from before the enum)."""
    return value.removeprefix(wire.OBJECTIVE.prefix).lower()
