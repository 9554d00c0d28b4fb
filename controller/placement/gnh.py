"""Greedy Nominator Heuristic: add replicas while the predicted objective improves.

After the base placement (seed 000, Greedy Nominator Heuristic): find the stage that bounds
the objective - the slowest service time for throughput, the stage contributing the most
time for latency - and nominate, among devices the placement does not use yet and that can
hold the stage, the one whose addition improves the predicted objective most. Repeat, one
replica at a time, until no nomination improves it. A device is used once overall (as a
primary or as one replica), like in the base placement.

Throughput and energy are judged in balanced mode (replicas add capacity); latency in
hedged mode (each request races on every replica, the first answer wins).
"""

from __future__ import annotations

from layerfleet.controller.placement.cost import predict
from layerfleet.controller.placement.model import Fleet, ModelCosts, Placement, Stage

MODE = {"throughput": "balanced", "latency": "hedged", "energy": "balanced",
        "weighted": "balanced"}


def nominate(costs: ModelCosts, fleet: Fleet, base: Placement, objective: str, *,
             sla_s: float | None = None, max_replicas: int | None = None) -> Placement:
    mode = MODE[objective]
    stages = list(base.stages)
    current = predict(costs, fleet, stages, mode=mode)
    score = current.objective(objective, sla_s)
    added = 0
    while max_replicas is None or added < max_replicas:
        used = {d for s in stages for d in s.devices}
        spare = [d for d in fleet.devices if d.up and d.id not in used]
        if not spare:
            break
        # The stages that bound the objective first; try every spare device on them.
        order = sorted(range(len(stages)), key=lambda i: -(
            current.stages[i].service_s if objective == "throughput" else
            current.stages[i].compute_s + current.stages[i].transfer_in_s))
        best: tuple[float, list[Stage]] | None = None
        for i in order:
            stage = stages[i]
            need = costs.range_memory(stage.start, stage.stop)
            for device in spare:
                if device.memory_bytes < need:
                    continue
                trial = stages[:i] + [Stage(stage.start, stage.stop, stage.device,
                                            (*stage.replicas, device.id))] + stages[i + 1:]
                value = predict(costs, fleet, trial, mode=mode).objective(objective, sla_s)
                if value < score - 1e-12 and (best is None or value < best[0]):
                    best = (value, trial)
            if best is not None:
                break  # nominate for the bounding stage before looking further down
        if best is None:
            break
        score, stages = best
        current = predict(costs, fleet, stages, mode=mode)
        added += 1
    if not added:
        return base
    return Placement(stages, current, base.strategy + "+gnh", objective)
