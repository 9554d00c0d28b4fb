"""Dynamic programs over the topological order.

The problem every program here solves: split layers [0, n) into contiguous stages; give
each stage one device; use each device at most once; devices may be left out; the order in
which devices are visited is the engine's choice; every stage fits its device's memory.
Costs are exactly those of cost.predict() without replicas. Among such placements:

  min_latency     minimises predicted end-to-end latency
  max_throughput  minimises the bottleneck (slowest stage or link: pipelined requests)
  min_energy      minimises energy per inference subject to latency <= SLA
  weighted        minimises w_latency * latency + w_energy * energy

Exactness: with at most EXACT_DEVICES devices the program runs over every subset of
devices and every visiting order (state: layers done, devices used, last device) and is
exact over all positions up to EXACT_POSITIONS cut positions. Larger instances use two
stated heuristics: (1) devices are visited in one of a few fixed orders (fastest first,
slowest first, best-connected first; each device still used or skipped), exact within each
order; (2) for models with more than EXACT_POSITIONS layers, cuts are restricted to
candidate positions (local minima of crossing bytes plus evenly spaced FLOP quantiles).
min_energy is exact (a Pareto DP over (energy, latency)) on small instances and a
Lagrangian sweep (min energy + lambda * latency over a range of lambda) on large ones.

Each program returns the best placement for every number of stages it could build
(best first), so callers can offer the top K distinct placements.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from layerfleet.controller.placement.cost import predict
from layerfleet.controller.placement.model import (
    Fleet,
    ModelCosts,
    Placement,
    PlacementError,
    Stage,
)

EXACT_DEVICES = 6
EXACT_POSITIONS = 64
INF = float("inf")


@dataclass
class _Tables:
    """Per-device matrices over (cut p, cut q) of candidate positions."""

    positions: np.ndarray          # candidate cut positions, 0 and n included
    devices: list[str]
    compute: np.ndarray            # [k, P, P]: seconds for k to run positions[p]..[q]
    busy_w: np.ndarray             # [k]
    cut_bytes: np.ndarray          # [P]
    out_bytes: float


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


def _tables(costs: ModelCosts, fleet: Fleet, positions: list[int]) -> _Tables:
    pos = np.asarray(positions)
    P = len(pos)
    flops = np.array([costs.range_flops(0, p) for p in pos])
    # range_memory for every pair of positions, vectorised (same formula as ModelCosts).
    params = np.concatenate([[0.0], np.cumsum(np.asarray(costs.param_bytes, dtype=float))])
    acts = np.asarray(costs.activation_bytes, dtype=float)
    cut = np.asarray(costs.cut_bytes, dtype=float)
    mem = np.full((P, P), np.inf)
    for i in range(P - 1):
        inner = np.maximum.accumulate(acts[pos[i]:])[pos[i + 1:] - pos[i] - 1]
        mem[i, i + 1:] = (params[pos[i + 1:]] - params[pos[i]] + cut[pos[i]] + cut[pos[i + 1:]]
                          + 2 * inner)
    compute = np.empty((len(fleet.devices), P, P))
    span = flops[None, :] - flops[:, None]
    for k, d in enumerate(fleet.devices):
        c = span / d.flops_per_s + d.overhead_s
        c[mem > d.memory_bytes] = np.inf
        compute[k] = c
    return _Tables(pos, [d.id for d in fleet.devices], compute,
                   np.array([d.busy_w for d in fleet.devices]),
                   np.asarray(costs.cut_bytes, dtype=float)[pos], float(costs.cut_bytes[-1]))


def _link_terms(fleet: Fleet, t: _Tables, a: str, b: str) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Per candidate cut: transfer seconds, serialisation seconds, link joules."""
    link = fleet.link(a, b)
    ser = t.cut_bytes / link.bandwidth_Bps
    return link.rtt_s / 2 + ser, ser, t.cut_bytes * link.joules_per_byte


@dataclass
class _State:
    value: np.ndarray       # [P] best score with positions[:q] done
    back_p: np.ndarray      # [P] where the last stage started (position index)
    back_state: np.ndarray  # [P] id of the state before it (-1: this is the first stage)


def _schemes(fleet: Fleet) -> Iterator[list[int] | None]:
    """None = every subset and order (exact); else fixed device orders (heuristic)."""
    if len(fleet.devices) <= EXACT_DEVICES:
        yield None
        return
    idx = list(range(len(fleet.devices)))
    speed = sorted(idx, key=lambda k: -fleet.devices[k].flops_per_s)
    yield speed
    yield speed[::-1]
    yield sorted(idx, key=lambda k: -fleet.link(fleet.source, fleet.devices[k].id).bandwidth_Bps)


def _run(costs: ModelCosts, fleet: Fleet, t: _Tables, kind: str, w_time: float,
         w_energy: float) -> dict[int, tuple[float, list[tuple[int, int, int]]]]:
    """Best score per number of stages (per last device in fixed orders)
    -> (score, [(device k, p index, q index)])."""
    D, P = len(t.devices), len(t.positions)
    best: dict[int, tuple[float, list[tuple[int, int, int]]]] = {}
    ids = t.devices

    steps: dict[tuple[str, int], np.ndarray] = {}

    def stage_matrix(prev: str, k: int, incoming: np.ndarray) -> np.ndarray:
        """[p, q] score of arriving with `incoming[p]` and running k on p..q."""
        step = steps.get((prev, k))
        if step is None:
            transfer, ser, joules = _link_terms(fleet, t, prev, ids[k])
            c = t.compute[k]
            if kind == "sum":
                step = np.where(np.isfinite(c), 0.0, np.inf)
                if w_time:  # (skip zero weights: 0 * inf would be NaN)
                    step = step + w_time * (transfer[:, None] + c)
                if w_energy:
                    step = step + w_energy * (t.busy_w[k] * c + joules[:, None])
            else:
                step = np.stack([np.broadcast_to(ser[:, None], c.shape), c])  # for max()
            steps[(prev, k)] = step
        if kind == "sum":
            return incoming[:, None] + step
        return np.maximum(np.maximum(incoming[:, None], step[0]), step[1])

    def finish(k: int, value: float) -> float:
        back = fleet.link(ids[k], fleet.source)
        if kind == "sum":
            return value + w_time * back.seconds(t.out_bytes) + \
                w_energy * t.out_bytes * back.joules_per_byte
        return max(value, t.out_bytes / back.bandwidth_Bps)

    for order in _schemes(fleet):
        states: dict[tuple, _State] = {}
        keys: list[tuple] = []  # state id -> key
        id_of: dict[tuple, int] = {}
        cols = np.arange(P)
        start = np.full(P, INF)
        start[0] = 0.0
        # key: (used devices frozenset or order index, last device, stage count)
        frontier: list[tuple] = []
        for k in (range(D) if order is None else order):
            m = stage_matrix(fleet.source, k, start)
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
                    score = finish(last, float(state.value[-1]))
                    slot = count if order is None else -1 - last  # per stage count / last device
                    if score < best.get(slot, (INF,))[0]:
                        best[slot] = (score, _trace(states, keys, key, P - 1))
                if not np.isfinite(state.value[:-1]).any():
                    continue
                choices = ([k for k in range(D) if k not in used] if order is None
                           else order[used + 1:])
                for k in choices:
                    m = stage_matrix(ids[last], k, state.value)
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


def _trace(states: dict[tuple, _State], keys: list[tuple], key: tuple, q: int
           ) -> list[tuple[int, int, int]]:
    stages = []
    while True:
        state = states[key]
        p, previous = int(state.back_p[q]), int(state.back_state[q])
        stages.append((key[1], p, q))
        if previous < 0:
            return stages[::-1]
        key, q = keys[previous], p


def _to_placement(costs: ModelCosts, fleet: Fleet, t: _Tables,
                  plan: list[tuple[int, int, int]], strategy: str, objective: str) -> Placement:
    stages = [Stage(int(t.positions[p]), int(t.positions[q]), t.devices[k]) for k, p, q in plan]
    return Placement(stages, predict(costs, fleet, stages), strategy, objective)


def _solve(costs: ModelCosts, fleet: Fleet, kind: str, objective: str, w_time: float = 1.0,
           w_energy: float = 0.0, positions: list[int] | None = None) -> list[Placement]:
    up = Fleet([d for d in fleet.devices if d.up], fleet.links, fleet.source,
               fleet.default_link)
    if not up.devices:
        raise PlacementError("no device is up")
    t = _tables(costs, up, positions or candidate_positions(costs))
    best = _run(costs, up, t, kind, w_time, w_energy)
    if not best:
        raise PlacementError(_why_nothing_fits(costs, up))
    ranked = sorted(best.values(), key=lambda item: item[0])
    return [_to_placement(costs, up, t, plan, f"dp-{objective}", objective)
            for _, plan in ranked]


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
               **kw: object) -> list[Placement]:
    """Minimum energy with latency <= sla_s (None: no SLA)."""
    if sla_s is None:
        return _solve(costs, fleet, "sum", "energy", 0.0, 1.0, **kw)  # type: ignore[arg-type]
    up = Fleet([d for d in fleet.devices if d.up], fleet.links, fleet.source,
               fleet.default_link)
    positions = candidate_positions(costs)
    if len(up.devices) <= EXACT_DEVICES and len(positions) <= 24:
        found = _pareto(costs, up, positions, sla_s)
    else:
        found = _lagrangian(costs, up, sla_s, positions)
    if not found:
        fastest = min_latency(costs, fleet)[0].prediction.latency_s
        raise PlacementError(f"no placement meets the {sla_s * 1000:.1f} ms SLA: the fastest "
                             f"possible is {fastest * 1000:.1f} ms")
    return found


def _lagrangian(costs: ModelCosts, fleet: Fleet, sla_s: float, positions: list[int]
                ) -> list[Placement]:
    feasible: dict[tuple, Placement] = {}
    for lam in [0.0, *np.geomspace(1e-3, 1e4, 22)]:
        for p in _solve(costs, fleet, "sum", "energy", float(lam), 1.0, positions):
            if p.prediction.latency_s <= sla_s + 1e-12:
                feasible[p.key()] = Placement(p.stages, p.prediction, "dp-energy-sla",
                                              "energy")
    return sorted(feasible.values(), key=lambda p: p.prediction.energy_j)


def _pareto(costs: ModelCosts, fleet: Fleet, positions: list[int], sla_s: float
            ) -> list[Placement]:
    """Exact: keep every (energy, latency)-Pareto-optimal partial placement."""
    ids = [d.id for d in fleet.devices]
    P = len(positions)
    t = _tables(costs, fleet, positions)
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
    for k in range(len(ids)):
        transfer, _, joules = _link_terms(fleet, t, fleet.source, ids[k])
        for q in range(1, P):
            c = t.compute[k, 0, q]
            if np.isfinite(c) and transfer[0] + c <= sla_s:
                key = (frozenset([k]), k, q)
                if add(key, (t.busy_w[k] * c + joules[0], transfer[0] + c, ((k, 0, q),))):
                    frontier.append(key)
    results: dict[tuple, Placement] = {}
    while frontier:
        nxt = []
        for key in frontier:
            used, last, p = key
            for e, l, plan in list(labels.get(key, [])):
                if p == P - 1:
                    stages = [Stage(int(positions[a]), int(positions[b]), ids[k])
                              for k, a, b in plan]
                    pred = predict(costs, fleet, stages)
                    if pred.latency_s <= sla_s + 1e-12:
                        results[tuple(plan)] = Placement(stages, pred, "dp-energy-sla",
                                                         "energy")
                    continue
                for k in range(len(ids)):
                    if k in used:
                        continue
                    transfer, _, joules = _link_terms(fleet, t, ids[last], ids[k])
                    for q in range(p + 1, P):
                        c = t.compute[k, p, q]
                        if not np.isfinite(c):
                            continue
                        nl = l + transfer[p] + c
                        if nl > sla_s:
                            continue
                        new_key = (used | {k}, k, q)
                        if add(new_key, (e + t.busy_w[k] * c + joules[p], nl,
                                         plan + ((k, p, q),))):
                            nxt.append(new_key)
        frontier = list(dict.fromkeys(nxt))
    return sorted(results.values(), key=lambda p: (p.prediction.energy_j, p.prediction.latency_s))


def all_placements(costs: ModelCosts, fleet: Fleet) -> Iterator[list[Stage]]:
    """Every placement of the stated problem (for brute-force tests on tiny instances)."""
    ids = [d.id for d in fleet.devices if d.up]
    n = costs.n
    for k in range(1, min(len(ids), n) + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = [0, *cuts, n]
            for devices in itertools.permutations(ids, k):
                yield [Stage(a, b, d) for a, b, d in zip(bounds, bounds[1:], devices)]
