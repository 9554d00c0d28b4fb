"""The entry points the controller calls: plan, compare_baselines, should_replan."""

from __future__ import annotations

from dataclasses import dataclass, field

from layerfleet.controller.placement import dp
from layerfleet.controller.placement.baselines import BASELINES
from layerfleet.controller.placement.gnh import nominate
from layerfleet.controller.placement.model import Fleet, ModelCosts, Placement, PlacementError

OBJECTIVES = ("latency", "throughput", "energy", "weighted")


def _solver(objective: str, sla_s: float | None):
    if objective == "latency":
        return lambda c, f: dp.min_latency(c, f)
    if objective == "throughput":
        return lambda c, f: dp.max_throughput(c, f)
    if objective == "energy":
        return lambda c, f: dp.min_energy(c, f, sla_s)
    if objective == "weighted":
        return lambda c, f: dp.weighted(c, f)
    raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def plan(costs: ModelCosts, fleet: Fleet, *, objective: str = "latency",
         sla_s: float | None = None, redundancy: str = "none", top_k: int = 1,
         baselines: dict[str, Placement | None] | None = None) -> list[Placement]:
    """The top_k distinct placements, best first (PlacementError when none fits).

    Candidates: the dynamic program's best placement for each number of stages, plus the
    baselines (so a heuristic instance is never worse than a baseline; pass them in when
    already computed with compare_baselines); with redundancy='gnh', each candidate also
    gets the Greedy Nominator's replicas.
    """
    found = list(_solver(objective, sla_s)(costs, fleet))
    if baselines is None:
        baselines = compare_baselines(costs, fleet, objective, sla_s)
    for p in baselines.values():
        if p is not None and p.prediction.objective(objective, sla_s) < float("inf"):
            found.append(p)
    if redundancy == "gnh":
        found = [nominate(costs, fleet, p, objective, sla_s=sla_s) for p in found] + found
    elif redundancy != "none":
        raise ValueError(f"unknown redundancy {redundancy!r}; choose none or gnh")
    unique: dict[tuple, Placement] = {}
    for p in found:
        unique.setdefault(p.key(), p)
    ranked = sorted(unique.values(), key=lambda p: (p.prediction.objective(objective, sla_s),
                                                    p.prediction.latency_s, len(p.stages)))
    if not ranked:
        raise PlacementError("no placement fits")
    return ranked[:max(top_k, 1)]


def compare_baselines(costs: ModelCosts, fleet: Fleet, objective: str,
                      sla_s: float | None = None) -> dict[str, Placement | None]:
    return {name: fn(costs, fleet, objective, sla_s) for name, fn in BASELINES.items()}


@dataclass
class ReplanDecision:
    replan: bool
    reason: str
    drifted: tuple[str, ...] = ()   # devices whose measured speed is the reason


@dataclass
class Observation:
    """A measurement of one device at time t (speed in FLOP/s, or link bandwidth)."""

    time: float
    device: str
    flops_per_s: float


@dataclass
class ReplanState:
    """Hysteresis memory: when each device's drift started, and the last re-plan time."""

    drifting_since: dict[str, float] = field(default_factory=dict)
    last_replan: float = float("-inf")
    seen_up: set[str] = field(default_factory=set)
    plan_generation: int = 0   # which placement this state watches (the caller resets it)


def should_replan(current: Placement, fleet_now: Fleet, observations: list[Observation],
                  state: ReplanState, *, now: float, threshold: float = 0.2,
                  sustain_s: float = 30.0, cooldown_s: float = 60.0) -> ReplanDecision:
    """Re-plan at once when a device of the placement is down or a better device came up;
    re-plan on drift only when a device's measured speed stays more than `threshold` away
    from what the plan assumed for `sustain_s`, and not again within `cooldown_s` (no
    flapping). `state` is updated in place."""
    up = {d.id for d in fleet_now.devices if d.up}
    came_up = sorted(up - state.seen_up) if state.seen_up else []
    state.seen_up = up
    missing = [d for d in current.devices if d not in up]
    if missing or came_up:
        state.last_replan = now
        state.drifting_since.clear()
        return ReplanDecision(True, f"device {', '.join(missing)} is down" if missing
                              else f"device {', '.join(came_up)} came up")
    assumed = {d.id: d.flops_per_s for d in fleet_now.devices}
    latest: dict[str, float] = {}
    for obs in sorted(observations, key=lambda o: o.time):
        latest[obs.device] = obs.flops_per_s
    for device, speed in latest.items():
        base = assumed.get(device)
        if not base:
            continue
        if abs(speed - base) / base > threshold:
            state.drifting_since.setdefault(device, now)
        else:
            state.drifting_since.pop(device, None)  # back within bounds: reset the clock
    sustained = [d for d, since in state.drifting_since.items() if now - since >= sustain_s]
    if sustained and now - state.last_replan >= cooldown_s:
        state.last_replan = now
        for d in sustained:
            state.drifting_since.pop(d, None)
        return ReplanDecision(True, f"speed of {', '.join(sustained)} drifted more than "
                                    f"{threshold:.0%} for {sustain_s:.0f} s",
                              drifted=tuple(sustained))
    return ReplanDecision(False, "within bounds")
