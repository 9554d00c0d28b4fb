"""What a user would do without layerfleet, as strategies with the engine's interface.

  whole_on_device   the whole model on the single best device that is not the cloud
  whole_in_cloud    the whole model on the cloud device (is_cloud)
  best_split        Neurosurgeon-style: one cut, the head on a device and the tail in the
                    cloud (or on a second device when there is no cloud), best cut and pair
  memory_split      exo-style: layers split over all devices in proportion to their memory
Each returns None when it cannot place the model (no cloud device, nothing fits).
"""

from __future__ import annotations

import numpy as np
from layerfleet.controller.placement.cost import fits, predict
from layerfleet.controller.placement.model import Fleet, ModelCosts, Placement, Stage


def _best(costs: ModelCosts, fleet: Fleet, candidates: list[list[Stage]], strategy: str,
          objective: str, sla_s: float | None) -> Placement | None:
    best: Placement | None = None
    for stages in candidates:
        if not fits(costs, fleet, stages):
            continue
        pred = predict(costs, fleet, stages)
        if best is None or pred.objective(objective, sla_s) < \
                best.prediction.objective(objective, sla_s):
            best = Placement(stages, pred, strategy, objective)
    return best


def whole_on_device(costs: ModelCosts, fleet: Fleet, objective: str,
                    sla_s: float | None = None) -> Placement | None:
    return _best(costs, fleet, [[Stage(0, costs.n, d.id)] for d in fleet.devices
                                if d.up and not d.is_cloud], "whole-on-device", objective, sla_s)


def whole_in_cloud(costs: ModelCosts, fleet: Fleet, objective: str,
                   sla_s: float | None = None) -> Placement | None:
    return _best(costs, fleet, [[Stage(0, costs.n, d.id)] for d in fleet.devices
                                if d.up and d.is_cloud], "whole-in-cloud", objective, sla_s)


def best_split(costs: ModelCosts, fleet: Fleet, objective: str,
               sla_s: float | None = None) -> Placement | None:
    up = [d for d in fleet.devices if d.up]
    clouds = [d for d in up if d.is_cloud]
    heads = [d for d in up if not d.is_cloud]
    pairs = [(h, c) for h in heads for c in clouds] if clouds else \
        [(a, b) for a in up for b in up if a.id != b.id]
    candidates = [[Stage(0, p, a.id), Stage(p, costs.n, b.id)]
                  for a, b in pairs for p in range(1, costs.n)]
    return _best(costs, fleet, candidates, "best-split", objective, sla_s)


def memory_split(costs: ModelCosts, fleet: Fleet, objective: str,
                 sla_s: float | None = None) -> Placement | None:
    up = [d for d in fleet.devices if d.up]
    total = sum(d.memory_bytes for d in up)
    params = np.concatenate([[0.0], np.cumsum(costs.param_bytes, dtype=float)])
    share = np.cumsum([d.memory_bytes / total for d in up])[:-1] * params[-1]
    cuts = sorted({int(np.clip(np.searchsorted(params, s), 1, costs.n - 1)) for s in share})
    bounds = [0, *cuts, costs.n]
    stages = [Stage(a, b, d.id) for a, b, d in zip(bounds, bounds[1:], up) if a < b]
    if stages[-1].stop != costs.n:
        return None
    return _best(costs, fleet, [stages], "memory-split", objective, sla_s)


BASELINES = {"whole-on-device": whole_on_device, "whole-in-cloud": whole_in_cloud,
             "best-split": best_split, "memory-split": memory_split}
