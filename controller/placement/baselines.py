"""What a user would do without layerfleet, as strategies with the engine's interface.

  whole_on_device   the whole model on the single best device that is not the cloud
  whole_in_cloud    the whole model on the cloud device (is_cloud)
  best_split        Neurosurgeon-style: one cut, the head on a device and the tail in the
                    cloud (or on a second device when there is no cloud), best cut and pair
  memory_split      exo-style: layers split over all devices in proportion to their memory
Each returns None when it cannot place the model (no cloud device, nothing fits).
In fleets of more than SPLIT_PAIRS_FROM devices, best_split tries the SPLIT_HEADS fastest
devices as heads (and as tails when there is no cloud): every pair of 1,000 devices would
take seconds, and no user would try them all either.
"""

from __future__ import annotations

import numpy as np
from layerfleet.controller.placement.cost import (
    compute_energy_j,
    compute_s,
    fits,
    link_energy_j,
    predict,
    serialisation_s,
    transfer_s,
)
from layerfleet.controller.placement.model import Device, Fleet, ModelCosts, Placement, Stage

SPLIT_PAIRS_FROM = 48
SPLIT_HEADS = 16


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


def _whole(costs: ModelCosts, fleet: Fleet, devices: list[Device], strategy: str,
           objective: str, sla_s: float | None) -> Placement | None:
    """The best of the whole model on one of `devices`: every device scored at once with
    numpy (same formulas as cost.predict; 10,000 devices in milliseconds), then the winner
    re-predicted by predict() itself."""
    if not devices:
        return None
    n = costs.n
    links = [fleet.link(fleet.source, d.id) for d in devices]
    bw = np.array([link.bandwidth_Bps for link in links])
    rtt = np.array([link.rtt_s for link in links])
    jpb = np.array([link.joules_per_byte for link in links])
    c = compute_s(costs.range_flops(0, n), np.array([d.flops_per_s for d in devices]),
                  np.array([d.overhead_s for d in devices]))
    cut_in, cut_out = float(costs.cut_bytes[0]), float(costs.cut_bytes[n])
    latency = transfer_s(cut_in, bw, rtt) + c + transfer_s(cut_out, bw, rtt)
    energy = (compute_energy_j(np.array([d.busy_w for d in devices]), c)
              + link_energy_j(cut_in, jpb) + link_energy_j(cut_out, jpb))
    if objective == "latency":
        score = latency
    elif objective == "throughput":
        score = np.maximum.reduce([serialisation_s(cut_in, bw), c,
                                   serialisation_s(cut_out, bw)])
    elif objective == "energy":
        score = np.where(latency <= (sla_s if sla_s is not None else np.inf) + 1e-12,
                         energy, np.inf)
    else:
        score = latency + energy
    need = costs.range_memory(0, n)
    score = np.where(np.array([d.memory_bytes for d in devices]) >= need, score, np.inf)
    i = int(np.argmin(score))
    if not np.isfinite(score[i]):
        return None
    stages = [Stage(0, n, devices[i].id)]
    return Placement(stages, predict(costs, fleet, stages), strategy, objective)


def whole_on_device(costs: ModelCosts, fleet: Fleet, objective: str,
                    sla_s: float | None = None) -> Placement | None:
    return _whole(costs, fleet, [d for d in fleet.devices if d.up and not d.is_cloud],
                  "whole-on-device", objective, sla_s)


def whole_in_cloud(costs: ModelCosts, fleet: Fleet, objective: str,
                   sla_s: float | None = None) -> Placement | None:
    return _whole(costs, fleet, [d for d in fleet.devices if d.up and d.is_cloud],
                  "whole-in-cloud", objective, sla_s)


def best_split(costs: ModelCosts, fleet: Fleet, objective: str,
               sla_s: float | None = None) -> Placement | None:
    up = [d for d in fleet.devices if d.up]
    clouds = [d for d in up if d.is_cloud]
    heads = [d for d in up if not d.is_cloud]
    if len(up) > SPLIT_PAIRS_FROM:
        fastest = sorted(up, key=lambda d: -d.flops_per_s)
        heads = [d for d in fastest if not d.is_cloud][:SPLIT_HEADS]
        clouds = [d for d in fastest if d.is_cloud][:SPLIT_HEADS]
        up = fastest[:SPLIT_HEADS]
    pairs = [(h, c) for h in heads for c in clouds] if clouds else \
        [(a, b) for a in up for b in up if a.id != b.id]
    n = costs.n
    if n < 2 or not pairs:
        return None
    # Every cut of every pair scored at once with numpy (same formulas as cost.predict),
    # then the winner re-predicted by predict() itself.
    p = np.arange(1, n)
    flops = np.array([costs.range_flops(0, int(i)) for i in range(n + 1)])
    cut = np.asarray(costs.cut_bytes, dtype=float)
    head_mem = np.array([costs.range_memory(0, int(i)) for i in p])
    tail_mem = np.array([costs.range_memory(int(i), n) for i in p])
    best_score, best_stages = np.inf, None
    for a, b in pairs:
        first, middle = fleet.link(fleet.source, a.id), fleet.link(a.id, b.id)
        back = fleet.link(b.id, fleet.source)
        c1 = compute_s(flops[p], a.flops_per_s, a.overhead_s)
        c2 = compute_s(flops[n] - flops[p], b.flops_per_s, b.overhead_s)
        latency = (transfer_s(cut[0], first.bandwidth_Bps, first.rtt_s) + c1
                   + transfer_s(cut[p], middle.bandwidth_Bps, middle.rtt_s) + c2
                   + transfer_s(cut[n], back.bandwidth_Bps, back.rtt_s))
        energy = (compute_energy_j(a.busy_w, c1) + link_energy_j(cut[0], first.joules_per_byte)
                  + compute_energy_j(b.busy_w, c2) + link_energy_j(cut[p], middle.joules_per_byte)
                  + link_energy_j(cut[n], back.joules_per_byte))
        if objective == "latency":
            score = latency
        elif objective == "throughput":
            score = np.maximum.reduce([
                np.full(n - 1, serialisation_s(cut[0], first.bandwidth_Bps)), c1,
                serialisation_s(cut[p], middle.bandwidth_Bps), c2,
                np.full(n - 1, serialisation_s(cut[n], back.bandwidth_Bps))])
        elif objective == "energy":
            score = np.where(latency <= (sla_s if sla_s is not None else np.inf) + 1e-12,
                             energy, np.inf)
        else:
            score = latency + energy
        score = np.where((head_mem <= a.memory_bytes) & (tail_mem <= b.memory_bytes),
                         score, np.inf)
        i = int(np.argmin(score))
        if score[i] < best_score:
            best_score = float(score[i])
            best_stages = [Stage(0, int(p[i]), a.id), Stage(int(p[i]), n, b.id)]
    if best_stages is None:
        return None
    return Placement(best_stages, predict(costs, fleet, best_stages), "best-split", objective)


def memory_split(costs: ModelCosts, fleet: Fleet, objective: str,
                 sla_s: float | None = None) -> Placement | None:
    up = [d for d in fleet.devices if d.up]
    total = sum(d.memory_bytes for d in up)
    params = np.concatenate([[0.0], np.cumsum(costs.param_bytes, dtype=float)])
    share = np.cumsum([d.memory_bytes / total for d in up])[:-1] * params[-1]
    cuts = sorted({int(c) for c in np.clip(np.searchsorted(params, share), 1, costs.n - 1)})
    bounds = [0, *cuts, costs.n]
    stages = [Stage(a, b, d.id) for a, b, d in zip(bounds, bounds[1:], up) if a < b]
    if stages[-1].stop != costs.n:
        return None
    return _best(costs, fleet, [stages], "memory-split", objective, sla_s)


BASELINES = {"whole-on-device": whole_on_device, "whole-in-cloud": whole_in_cloud,
             "best-split": best_split, "memory-split": memory_split}
