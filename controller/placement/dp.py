"""The placement programs: which solver runs for which fleet, and the exact subset DP.

The problem every program here solves: split layers [0, n) into contiguous stages; give
each stage one device; use each device at most once; devices may be left out; the order in
which devices are visited is the engine's choice; every stage fits its device's memory.
Costs are exactly those of cost.predict() without replicas. Among such placements:

  min_latency     minimises predicted end-to-end latency
  max_throughput  minimises the bottleneck (slowest stage or link: pipelined requests)
  min_energy      minimises energy per inference subject to latency <= SLA
  weighted        minimises w_latency * latency + w_energy * energy

Cuts: every position for models up to EXACT_POSITIONS layers; larger models use candidate
positions (local minima of crossing bytes plus evenly spaced FLOP quantiles, 64 at most).
Over those positions, by the number of devices up:
  <= EXACT_DEVICES (6)   exact: a DP over every subset and order of devices (state: layers
                         done, devices used, last device), vectorised over positions; for
                         min_energy a Pareto DP over (energy, latency).
  <= FLEET_DEVICES (48)  branch and bound (search.py) seeded with the best of three fixed
                         device orders: exact when it completes within its node budget,
                         otherwise the best found with a proven lower bound.
  more                   fleet scale (fleet_scale.py): devices grouped into classes, a lower
                         bound from the class envelopes, the search on a shortlist.
Every answer's `lower_bound` says how good it is: equal to its objective when proven optimal
over the candidate positions.

Each program returns its best placement first, then other good ones it met (the best per
number of stages for the subset DP), so callers can offer the top K distinct placements.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from layerfleet.controller.placement import fleet_scale, search
from layerfleet.controller.placement.model import (
    Fleet,
    ModelCosts,
    Placement,
    PlacementError,
    Stage,
)
from layerfleet.controller.placement.search import Objective, Path, Solved, to_placement

EXACT_DEVICES = 6
FLEET_DEVICES = fleet_scale.FLEET_DEVICES
EXACT_POSITIONS = 64
FIXED_ORDER_DEVICES = 24  # fixed-order seeds cost D^2 P^2: past this the search seeds itself
INF = float("inf")


def candidate_positions(costs: ModelCosts, limit: int = EXACT_POSITIONS) -> list[int]:
    n = costs.n
    if n + 1 <= limit:
        return list(range(n + 1))
    cut = np.asarray(costs.cut_bytes, dtype=float)
    # Local minima of crossing bytes: where a cut is cheapest nearby.
    minima = [p for p in range(1, n) if cut[p] <= cut[p - 1] and cut[p] <= cut[p + 1]]
    minima.sort(key=lambda p: cut[p])
    prefix = np.cumsum(costs.flops, dtype=float)
    total = prefix[-1] or 1.0
    quantiles = {int(np.searchsorted(prefix, total * k / (limit // 2))) + 1
                 for k in range(1, limit // 2)}
    chosen = {0, n} | {p for p in quantiles if 0 < p < n}
    for p in minima:
        if len(chosen) >= limit:
            break
        chosen.add(p)
    return sorted(chosen)


@dataclass
class _State:
    value: np.ndarray       # [P] best score with positions[:q] done
    back_p: np.ndarray      # [P] where the last stage started (position index)
    back_state: np.ndarray  # [P] id of the state before it (-1: this is the first stage)


def _orders(fleet: Fleet) -> list[list[int]]:
    """The heuristic's fixed device orders: fastest first, slowest first, best-connected."""
    idx = list(range(len(fleet.devices)))
    speed = sorted(idx, key=lambda k: -fleet.devices[k].flops_per_s)
    return [speed, speed[::-1],
            sorted(idx, key=lambda k: -fleet.link(fleet.source, fleet.devices[k].id)
                   .bandwidth_Bps)]


def _run(obj: Objective, orders: list[list[int]] | None) -> dict[int, tuple[float, Path]]:
    """orders None: every subset and order (exact), best per stage count; else exact within
    each fixed order, best per last device. -> slot: (score, [(device k, p, q)])."""
    D, P = obj.stage.shape[0], obj.stage.shape[1]
    op = np.add if obj.combine == "sum" else np.maximum
    best: dict[int, tuple[float, Path]] = {}
    cols = np.arange(P)
    start = np.full(P, INF)
    start[0] = 0.0

    def stage_matrix(prev: int, k: int, incoming: np.ndarray) -> np.ndarray:
        """[p, q] score of arriving with `incoming[p]` and running k on p..q."""
        return op(op(incoming, obj.link[prev, k])[:, None], obj.stage[k])

    for order in [None] if orders is None else orders:
        states: dict[tuple, _State] = {}
        keys: list[tuple] = []  # state id -> key
        id_of: dict[tuple, int] = {}
        # key: (used devices frozenset or order index, last device, stage count)
        frontier: list[tuple] = []
        for k in (range(D) if order is None else order):
            m = stage_matrix(D, k, start)
            arg = np.argmin(m, axis=0)
            key = (frozenset([k]), k, 1) if order is None else (order.index(k), k, 0)
            states[key] = _State(m[arg, cols], arg, np.full(P, -1))
            id_of[key] = len(keys)
            keys.append(key)
            frontier.append(key)
        if order is not None:
            # Transitions only go to later devices in the order: one pass in order suffices.
            frontier.sort(key=lambda k: k[0])
        while frontier:
            nxt: list[tuple] = []
            for key in frontier:
                used, last, count = key
                state = states[key]
                if np.isfinite(state.value[-1]):
                    score = float(op(state.value[-1], obj.link[last, D, P - 1]))
                    slot = count if order is None else -1 - last  # per stage count / last device
                    if score < best.get(slot, (INF,))[0]:
                        best[slot] = (score, _trace(states, keys, key, P - 1))
                if not np.isfinite(state.value[:-1]).any():
                    continue
                choices = ([k for k in range(D) if k not in used] if order is None
                           else order[used + 1:])
                for k in choices:
                    m = stage_matrix(last, k, state.value)
                    arg = np.argmin(m, axis=0)
                    value = m[arg, cols]
                    if not np.isfinite(value).any():
                        continue
                    my_id = id_of[key]
                    # Fixed orders merge stage counts (keeps the program D^2, not D^3).
                    new_key = (used | {k}, k, count + 1) if order is None else \
                        (order.index(k), k, 0)
                    old = states.get(new_key)
                    if old is None:
                        states[new_key] = _State(value, arg, np.full(P, my_id))
                        id_of[new_key] = len(keys)
                        keys.append(new_key)
                        nxt.append(new_key)
                    else:
                        better = value < old.value
                        if better.any():
                            old.value = np.where(better, value, old.value)
                            old.back_p = np.where(better, arg, old.back_p)
                            old.back_state = np.where(better, my_id, old.back_state)
                            if new_key not in nxt:
                                nxt.append(new_key)
            frontier = nxt if order is None else []
    return best


def _trace(states: dict[tuple, _State], keys: list[tuple], key: tuple, q: int) -> Path:
    stages = []
    while True:
        state = states[key]
        p, previous = int(state.back_p[q]), int(state.back_state[q])
        stages.append((key[1], p, q))
        if previous < 0:
            return tuple(stages[::-1])
        key, q = keys[previous], p


def _up(fleet: Fleet) -> Fleet:
    if all(d.up for d in fleet.devices) and fleet.devices:
        return fleet   # (the same object keeps what solvers derived from it)
    up = Fleet([d for d in fleet.devices if d.up], fleet.links, fleet.source,
               fleet.default_link)
    if not up.devices:
        raise PlacementError("no device is up")
    return up


def solve(costs: ModelCosts, fleet: Fleet, kind: search.Combine, objective: str,
          w_time: float = 1.0, w_energy: float = 0.0,
          positions: list[int] | None = None, max_nodes: int | None = None) -> Solved:
    up = _up(fleet)
    positions = positions or candidate_positions(costs)
    if len(up.devices) > FLEET_DEVICES:
        return fleet_scale.solve(costs, up, kind, objective, w_time, w_energy, positions,
                                 max_nodes=max_nodes)
    t = search.tables(costs, up, positions)
    obj = search.objective(t, kind, w_time, w_energy)
    strategy = f"dp-{objective}"
    if len(up.devices) <= EXACT_DEVICES:
        ranked = sorted(_run(obj, None).values())
        if not ranked:
            raise PlacementError(_why_nothing_fits(costs, up))
        return Solved([to_placement(costs, up, t, plan, strategy, objective,
                                    ranked[0][0] if i == 0 else None)
                       for i, (_, plan) in enumerate(ranked)], True)
    seeds = sorted(_run(obj, _orders(up)).values()) \
        if len(up.devices) <= FIXED_ORDER_DEVICES else []
    found = search.optimise(t, obj, incumbent=seeds[0] if seeds else None,
                            max_nodes=max_nodes)
    if found.value == INF:
        if found.complete:
            raise PlacementError(_why_nothing_fits(costs, up))
        raise PlacementError(f"no placement found within the search ({found.nodes} nodes)")
    strategy = f"search-{objective}"
    best = to_placement(costs, up, t, found.path, strategy, objective, found.lower_bound)
    others = [to_placement(costs, up, t, plan, f"fixed-order-{objective}", objective)
              for _, plan in seeds if plan != found.path]
    return Solved([best, *others], found.complete)


def _solve(costs: ModelCosts, fleet: Fleet, kind: search.Combine, objective: str,
           w_time: float = 1.0, w_energy: float = 0.0,
           positions: list[int] | None = None) -> list[Placement]:
    return solve(costs, fleet, kind, objective, w_time, w_energy, positions).placements


def _why_nothing_fits(costs: ModelCosts, fleet: Fleet) -> str:
    biggest = max(fleet.devices, key=lambda d: d.memory_bytes)
    # The largest single layer is the least any stage must hold.
    worst = max(range(costs.n), key=lambda i: costs.range_memory(i, i + 1))
    need = costs.range_memory(worst, worst + 1)
    total = costs.range_memory(0, costs.n)
    if need > biggest.memory_bytes:
        return (f"layer {worst} ({costs.layer_names[worst]}, {need / 1e6:.1f} MB) does not fit "
                f"any device: largest free memory is {biggest.id} with "
                f"{biggest.memory_bytes / 1e6:.1f} MB")
    free = sum(d.memory_bytes for d in fleet.devices)
    return (f"layers 0-{costs.n - 1} ({total / 1e6:.1f} MB in all) do not fit the "
            f"{len(fleet.devices)} devices up ({free / 1e6:.1f} MB free in all, each device "
            f"used once)")


def min_latency(costs: ModelCosts, fleet: Fleet, **kw: object) -> list[Placement]:
    return _solve(costs, fleet, "sum", "latency", 1.0, 0.0, **kw)  # type: ignore[arg-type]


def max_throughput(costs: ModelCosts, fleet: Fleet, **kw: object) -> list[Placement]:
    return _solve(costs, fleet, "max", "throughput", **kw)  # type: ignore[arg-type]


def weighted(costs: ModelCosts, fleet: Fleet, w_latency: float = 1.0, w_energy: float = 1.0,
             **kw: object) -> list[Placement]:
    return _solve(costs, fleet, "sum", "weighted", w_latency, w_energy,
                  **kw)  # type: ignore[arg-type]


def min_energy(costs: ModelCosts, fleet: Fleet, sla_s: float | None = None,
               positions: list[int] | None = None,
               max_nodes: int = search.DEFAULT_NODES) -> list[Placement]:
    """Minimum energy with latency <= sla_s (None: no SLA). When nothing meets the SLA the
    error says whether that is proven ("no placement meets") or only what the search saw
    ("none found within the search"), with the best latency found either way."""
    if sla_s is None:
        return _solve(costs, fleet, "sum", "energy", 0.0, 1.0, positions)
    up = _up(fleet)
    all_positions = positions is None and costs.n + 1 <= EXACT_POSITIONS
    positions = positions or candidate_positions(costs)
    fastest = solve(costs, up, "sum", "latency", 1.0, 0.0, positions, max_nodes)
    quick = fastest.placements[0]
    if len(up.devices) > FLEET_DEVICES:
        found, complete = fleet_scale.min_energy(costs, up, sla_s, positions, quick,
                                                 max_nodes=max_nodes)
    elif len(up.devices) <= EXACT_DEVICES and len(positions) <= 24:
        found, complete = _pareto(costs, up, positions, sla_s), True
    else:
        found, complete = search.energy_placements(costs, up, sla_s, positions, quick,
                                                           max_nodes)
    if found:
        return found
    raise PlacementError(_sla_message(sla_s, quick, complete and fastest.complete,
                                      all_positions))


def _sla_message(sla_s: float, quick: Placement, proven: bool, all_positions: bool) -> str:
    best = quick.prediction.latency_s * 1000
    if proven and all_positions:
        return (f"no placement meets the {sla_s * 1000:.1f} ms SLA: the fastest possible is "
                f"{best:.1f} ms")
    where = "" if all_positions else " among the candidate cuts"
    if proven:
        return (f"no placement{where} meets the {sla_s * 1000:.1f} ms SLA: the fastest "
                f"is {best:.1f} ms")
    floor = quick.lower_bound * 1000 if quick.lower_bound is not None else 0.0
    return (f"no placement found within the search{where} meets the {sla_s * 1000:.1f} ms "
            f"SLA: the fastest found is {best:.1f} ms (none can be faster than "
            f"{floor:.1f} ms)")


def _pareto(costs: ModelCosts, fleet: Fleet, positions: list[int], sla_s: float
            ) -> list[Placement]:
    """Exact: keep every (energy, latency)-Pareto-optimal partial placement."""
    ids = [d.id for d in fleet.devices]
    D = len(ids)
    P = len(positions)
    t = search.tables(costs, fleet, positions)
    energy, time = search.objective(t, "sum", 0.0, 1.0), search.objective(t, "sum", 1.0, 0.0)
    # labels[(used, last, q)] = list of (energy, latency, plan)
    labels: dict[tuple, list[tuple[float, float, tuple]]] = {}

    def add(key: tuple, label: tuple[float, float, tuple]) -> bool:
        bucket = labels.setdefault(key, [])
        e, l, _ = label
        if any(be <= e and bl <= l for be, bl, _ in bucket):
            return False
        bucket[:] = [b for b in bucket if not (e <= b[0] and l <= b[1])] + [label]
        return True

    frontier = []
    for k in range(D):
        for q in range(1, P):
            e = energy.link[D, k, 0] + energy.stage[k, 0, q]
            s = time.link[D, k, 0] + time.stage[k, 0, q]
            if np.isfinite(s) and s <= sla_s:
                key = (frozenset([k]), k, q)
                if add(key, (e, s, ((k, 0, q),))):
                    frontier.append(key)
    results: dict[tuple, Placement] = {}
    while frontier:
        nxt = []
        for key in frontier:
            used, last, p = key
            for e, l, plan in list(labels.get(key, [])):
                if p == P - 1:
                    placement = to_placement(costs, fleet, t, plan, "dp-energy-sla", "energy")
                    if placement.prediction.latency_s <= sla_s + 1e-12:
                        results[tuple(plan)] = placement
                    continue
                for k in range(D):
                    if k in used:
                        continue
                    for q in range(p + 1, P):
                        if not np.isfinite(time.stage[k, p, q]):
                            continue
                        nl = l + time.link[last, k, p] + time.stage[k, p, q]
                        if nl > sla_s:
                            continue
                        new_key = (used | {k}, k, q)
                        if add(new_key, (e + energy.link[last, k, p] + energy.stage[k, p, q],
                                         nl, plan + ((k, p, q),))):
                            nxt.append(new_key)
        frontier = list(dict.fromkeys(nxt))
    ranked = sorted(results.values(), key=lambda p: (p.prediction.energy_j, p.prediction.latency_s))
    if ranked:
        ranked[0] = replace(ranked[0], lower_bound=ranked[0].prediction.energy_j)
    return ranked


def all_placements(costs: ModelCosts, fleet: Fleet) -> Iterator[list[Stage]]:
    """Every placement of the stated problem (for brute-force tests on tiny instances)."""
    ids = [d.id for d in fleet.devices if d.up]
    n = costs.n
    for k in range(1, min(len(ids), n) + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = [0, *cuts, n]
            for devices in itertools.permutations(ids, k):
                yield [Stage(a, b, d) for a, b, d in zip(bounds, bounds[1:], devices)]
