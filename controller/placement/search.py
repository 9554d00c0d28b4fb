"""Branch and bound over (cut, device): exact placement where the subset DP cannot go.

The problem is dp.py's (contiguous stages, one device per stage, each device at most once,
memory respected) on a fixed list of candidate cut positions. One objective is a table of
stage costs `stage[k, p, q]` (device k runs positions p..q) and link costs `link[a, b, q]`
(cut q handed from node a to node b; the source is the last node), combined along a
placement by sum (latency, energy, weighted) or by max (the throughput bottleneck). The
tables come from cost.py's formulas, so a path's value is what cost.predict() says.

Bound. Drop "each device at most once" and what is left is a shortest (or bottleneck) path
in a DAG over (cut, device): `relax()` solves it backwards exactly in O(D P^2 + P D^2). Its
cost-to-go from any partial placement is a lower bound on every completion of it, and it is
tight whenever the relaxed optimum happens to use each device once (then the first dive
finds the optimum and the bound proves it). For the bottleneck, a capacity bound is added:
the layers still to run need some B with sum over unused devices of
flops_per_s * max(0, B - overhead_s) >= their FLOPs.

Search. Depth first, best bound first, pruning every node whose bound reaches the best
placement found; a memo keeps the best cost per (cut, last device, devices used). The
budget is a number of expanded nodes (deterministic, unlike a clock). When it runs out the
answer carries the least bound still open: no placement of the problem is better than it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from layerfleet.controller.placement.cost import (
    LinkTable,
    compute_energy_j,
    compute_table,
    link_table,
    predict,
)
from layerfleet.controller.placement.model import Fleet, ModelCosts, Placement, Stage

INF = math.inf
Combine = Literal["sum", "max"]
Path = tuple[tuple[int, int, int], ...]   # (device index, from position index, to index)
DEFAULT_NODES = 2000
_REL = 1e-12    # a bound within this of the best found cannot improve on it


@dataclass(frozen=True)
class Tables:
    """The cost model evaluated once for one model, fleet and list of cut positions."""

    positions: np.ndarray      # [P] candidate cut positions, 0 and n included
    ids: list[str]             # [D] device ids; node D is the source
    compute: np.ndarray        # [D, P, P] seconds (inf: does not fit, or q <= p)
    busy_w: np.ndarray         # [D]
    flops_per_s: np.ndarray    # [D]
    overhead_s: np.ndarray     # [D]
    flops_to: np.ndarray       # [P] FLOPs of layers before each position
    links: LinkTable           # [D + 1, D + 1, P]


def tables(costs: ModelCosts, fleet: Fleet, positions: list[int]) -> Tables:
    pos = np.asarray(positions)
    nodes = [d.id for d in fleet.devices] + [fleet.source]
    cut = np.asarray(costs.cut_bytes, dtype=float)[pos]
    return Tables(pos, nodes[:-1], compute_table(costs, fleet.devices, pos),
                  np.array([d.busy_w for d in fleet.devices]),
                  np.array([d.flops_per_s for d in fleet.devices]),
                  np.array([d.overhead_s for d in fleet.devices]),
                  np.array([costs.range_flops(0, int(p)) for p in pos]),
                  link_table(fleet, nodes, cut))


@dataclass(frozen=True)
class Objective:
    combine: Combine
    stage: np.ndarray   # [D, P, P]
    link: np.ndarray    # [D + 1, D + 1, P]


def objective(t: Tables, kind: Combine, w_time: float = 1.0, w_energy: float = 0.0
              ) -> Objective:
    """Sum: w_time * seconds + w_energy * joules; max: the pipeline's slowest resource."""
    if kind == "max":
        return Objective("max", t.compute, t.links.serialise)
    stage = np.where(np.isfinite(t.compute), 0.0, INF)
    link = np.where(np.isfinite(t.links.transfer), 0.0, INF)
    if w_time:  # (zero weights skipped: 0 * inf would be NaN)
        stage = stage + w_time * t.compute
        link = link + w_time * t.links.transfer
    if w_energy:
        stage = stage + w_energy * compute_energy_j(t.busy_w[:, None, None], t.compute)
        link = link + w_energy * t.links.joules
    return Objective("sum", stage, link)


def _op(combine: Combine):  # type: ignore[no-untyped-def]
    return np.add if combine == "sum" else np.maximum


@dataclass(frozen=True)
class Relaxed:
    """Exact cost-to-go with devices reusable: a lower bound for the real problem."""

    to_go: np.ndarray    # [P, D]: device k holds cut q; the rest costs at least this
    root: float          # the whole problem costs at least this


def relax(obj: Objective) -> Relaxed:
    D, P = obj.stage.shape[0], obj.stage.shape[1]
    op = _op(obj.combine)
    to_go = np.full((P, D), INF)
    to_go[P - 1] = obj.link[:D, D, P - 1]          # hand the answer back to the source
    start = np.full(D, INF)
    for q in range(P - 2, -1, -1):
        # start[k]: k runs a stage from q, then the best relaxed rest
        start = op(obj.stage[:, q, q + 1:], to_go[q + 1:].T).min(axis=1)
        to_go[q] = op(obj.link[:D, :D, q], start[None, :]).min(axis=1)
    root = float(op(obj.link[D, :D, 0], start).min()) if P > 1 else INF
    return Relaxed(to_go, root)


def relaxed_path(obj: Objective, relaxed: Relaxed) -> Path:
    """The relaxation's optimum (a node may appear twice): follow the best step from the
    source until the last cut."""
    D, P = obj.stage.shape[0], obj.stage.shape[1]
    op = _op(obj.combine)
    to_go = relaxed.to_go.T
    path: list[tuple[int, int, int]] = []
    q, holder = 0, D
    while q < P - 1:
        f = op(op(obj.link[holder, :D, q][:, None], obj.stage[:, q, :]), to_go)
        k, r = np.unravel_index(int(np.argmin(f)), f.shape)
        if not np.isfinite(f[k, r]):
            return ()
        path.append((int(k), q, int(r)))
        q, holder = int(r), int(k)
    return tuple(path)


@dataclass(frozen=True)
class Found:
    value: float          # the best placement's objective (inf: none found)
    path: Path
    lower_bound: float    # no placement of the problem is better
    complete: bool        # the search ran to the end: value is the optimum
    nodes: int


class _Capacity:
    """Bottleneck bound from compute capacity: the FLOPs after cut q need some B with
    sum over unused devices of min(flops_per_s * max(0, B - overhead_s), most FLOPs one
    stage fits in its memory) >= those FLOPs."""

    def __init__(self, t: Tables) -> None:
        self.rest = t.flops_to[-1] - t.flops_to
        span = t.flops_to[None, :] - t.flops_to[:, None]
        self.most = np.where(np.isfinite(t.compute), span[None], 0.0).max(axis=(1, 2))
        self.f, self.o = t.flops_per_s, t.overhead_s

    def __call__(self, used: list[int]) -> np.ndarray:
        """[P]: the least bottleneck for the layers after each cut, devices `used` aside."""
        free = np.ones(len(self.f), dtype=bool)
        free[used] = False
        f, o, most = self.f[free], self.o[free], self.most[free]
        out = np.zeros(len(self.rest))
        if not len(f):
            out[self.rest > 0] = INF
            return out
        full = o + most / f                   # where each device's stage is as big as it fits
        knots = np.unique(np.concatenate([o, full]))
        # From its own knot on a device gives exactly `most`: f * (knot - o) rounds, and a
        # level reached a hair late would make the bound jump to a later knot.
        cap = np.where(knots[:, None] >= full, most,
                       np.minimum(f * np.maximum(knots[:, None] - o, 0.0), most)).sum(axis=1)
        rising = np.concatenate([[True], np.diff(cap) > 0])   # the first knot of each level
        knots, cap = knots[rising], cap[rising]
        # Between knots the interpolation rounds too: a relative slack of 1e-9 keeps the
        # bound below the optimum it must not pass.
        out = np.interp(self.rest, cap, knots) * (1 - 1e-9)
        out[self.rest > cap[-1] * (1 + 1e-9)] = INF
        out[self.rest <= 0] = 0.0
        return out


def branch_and_bound(t: Tables, obj: Objective, relaxed: Relaxed, *,
                     incumbent: tuple[float, Path] | None = None,
                     max_nodes: int = DEFAULT_NODES) -> Found:
    D, P = obj.stage.shape[0], obj.stage.shape[1]
    op = _op(obj.combine)
    capacity = _Capacity(t) if obj.combine == "max" else None
    best, best_path = incumbent if incumbent is not None else (INF, ())
    to_go = relaxed.to_go.T                      # [D, P]
    back = obj.link[:D, D, P - 1]
    # (bound, cost so far, cut index, holder node, devices used as bits, path)
    stack: list[tuple[float, float, int, int, int, Path]] = [(relaxed.root, 0.0, 0, D, 0, ())]
    memo: dict[tuple[int, int, int], float] = {}
    nodes = 0
    while stack:
        bound, g, q, k, used, path = stack[-1]
        devices = [stage[0] for stage in path]
        if capacity is not None and bound < best * (1 - _REL):
            bound = max(bound, float(capacity(devices)[q]))   # now without its own device
        if bound >= best * (1 - _REL):
            stack.pop()
            continue
        if nodes >= max_nodes:
            break
        stack.pop()
        nodes += 1
        g2 = op(op(g, obj.link[k, :D, q])[:, None], obj.stage[:, q, :])   # [D, P]
        g2[devices] = INF
        done = op(g2[:, P - 1], back)
        j = int(np.argmin(done))
        if done[j] < best:
            best, best_path = float(done[j]), (*path, (j, q, P - 1))
        f = op(g2[:, :P - 1], to_go[:, :P - 1])
        pruned = f if capacity is None else np.maximum(f, capacity(devices)[None, :P - 1])
        ks, rs = np.nonzero(pruned < best * (1 - _REL))
        if not len(ks):
            continue
        fs = pruned[ks, rs]
        for i in np.argsort(-f[ks, rs], kind="stable"):   # worst pushed: best popped first
            k2, r = int(ks[i]), int(rs[i])
            gv = float(g2[k2, r])
            key = (r, k2, used | 1 << k2)
            if memo.get(key, INF) <= gv:
                continue
            memo[key] = gv
            stack.append((float(fs[i]), gv, r, k2, key[2], (*path, (k2, q, r))))
    return _found(best, best_path, [entry[0] for entry in stack], nodes)


def optimise(t: Tables, obj: Objective, *, incumbent: tuple[float, Path] | None = None,
             max_nodes: int | None = None) -> Found:
    """The solver for one objective: the threshold search (bottleneck.py) for the
    bottleneck, the branch and bound above for sums. max_nodes None: the solver's default."""
    if obj.combine == "max":
        from layerfleet.controller.placement import bottleneck  # (it builds on this module)

        return bottleneck.least_bottleneck(t, obj, relax(obj), incumbent=incumbent,
                                           max_nodes=max_nodes or bottleneck.DEFAULT_NODES)
    return branch_and_bound(t, obj, relax(obj), incumbent=incumbent,
                            max_nodes=max_nodes or DEFAULT_NODES)


def _found(best: float, path: Path, open_bounds: list[float], nodes: int) -> Found:
    """Every placement better than `best` lies under a node still open, and costs at least
    its bound: the least open bound is a lower bound (none open: best is the optimum)."""
    still = [b for b in open_bounds if b < best * (1 - _REL)]
    return Found(best, path, min([best, *still]), not still, nodes)


def energy_under_sla(t: Tables, energy: Objective, time: Objective, sla_s: float, *,
                     incumbent: tuple[float, Path] | None = None,
                     max_nodes: int = DEFAULT_NODES) -> Found:
    """Least energy among placements whose latency is at most sla_s: the same search with
    two sums, pruned on energy (against the best found) and on time (against the SLA)."""
    D, P = energy.stage.shape[0], energy.stage.shape[1]
    e_rel, t_rel = relax(energy), relax(time)
    limit = sla_s + 1e-12
    best, best_path = incumbent if incumbent is not None else (INF, ())
    e_go, t_go = e_rel.to_go.T, t_rel.to_go.T
    e_back, t_back = energy.link[:D, D, P - 1], time.link[:D, D, P - 1]
    stack: list[tuple[float, float, float, int, int, int, Path]] = []
    if t_rel.root <= limit:
        stack.append((e_rel.root, 0.0, 0.0, 0, D, 0, ()))
    memo: dict[tuple[int, int, int], list[tuple[float, float]]] = {}
    nodes = 0
    while stack:
        bound, e, s, q, k, used, path = stack[-1]
        if bound >= best * (1 - _REL):
            stack.pop()
            continue
        if nodes >= max_nodes:
            break
        stack.pop()
        nodes += 1
        e2 = e + energy.link[k, :D, q][:, None] + energy.stage[:, q, :]
        s2 = s + time.link[k, :D, q][:, None] + time.stage[:, q, :]
        for stage in path:
            e2[stage[0]] = INF
        done_e = np.where(s2[:, P - 1] + t_back <= limit, e2[:, P - 1] + e_back, INF)
        j = int(np.argmin(done_e))
        if done_e[j] < best:
            best, best_path = float(done_e[j]), (*path, (j, q, P - 1))
        fe = e2[:, :P - 1] + e_go[:, :P - 1]
        ft = s2[:, :P - 1] + t_go[:, :P - 1]
        ks, rs = np.nonzero((fe < best * (1 - _REL)) & (ft <= limit))
        if not len(ks):
            continue
        fs = fe[ks, rs]
        for i in np.argsort(-fs, kind="stable"):
            k2, r = int(ks[i]), int(rs[i])
            ev, sv = float(e2[k2, r]), float(s2[k2, r])
            key = (r, k2, used | 1 << k2)
            labels = memo.setdefault(key, [])
            if any(le <= ev and ls <= sv for le, ls in labels):
                continue
            labels[:] = [(le, ls) for le, ls in labels if not (ev <= le and sv <= ls)]
            labels.append((ev, sv))
            stack.append((float(fs[i]), ev, sv, r, k2, key[2], (*path, (k2, q, r))))
    return _found(best, best_path, [entry[0] for entry in stack], nodes)


def to_placement(costs: ModelCosts, fleet: Fleet, t: Tables, plan: Path, strategy: str,
                 objective: str, lower_bound: float | None = None) -> Placement:
    stages = [Stage(int(t.positions[p]), int(t.positions[q]), t.ids[k]) for k, p, q in plan]
    return Placement(stages, predict(costs, fleet, stages), strategy, objective, lower_bound)


@dataclass(frozen=True)
class Solved:
    """A program's answer: placements best first; the first one's lower bound says how far
    from the optimum it can be; `complete`: the optimum over the candidate positions."""

    placements: list[Placement]
    complete: bool


def energy_placements(costs: ModelCosts, fleet: Fleet, sla_s: float, positions: list[int],
                   fastest: Placement, max_nodes: int) -> tuple[list[Placement], bool]:
    """The least-energy placement under the SLA and the fastest one if it meets it."""
    t = tables(costs, fleet, positions)
    energy, time = objective(t, "sum", 0.0, 1.0), objective(t, "sum", 1.0, 0.0)
    feasible = fastest.prediction.latency_s <= sla_s + 1e-12
    seed = None
    if feasible:
        index = {(int(p)): i for i, p in enumerate(t.positions)}
        ids = {d: i for i, d in enumerate(t.ids)}
        seed = (fastest.prediction.energy_j, tuple(
            (ids[s.device], index[s.start], index[s.stop]) for s in fastest.stages))
    found = energy_under_sla(t, energy, time, sla_s, incumbent=seed, max_nodes=max_nodes)
    out = []
    if found.value < INF:
        out.append(to_placement(costs, fleet, t, found.path, "search-energy-sla", "energy",
                                found.lower_bound))
    if feasible and (not out or out[0].key() != fastest.key()):
        out.append(replace(fastest, strategy="search-latency", objective="energy",
                           lower_bound=None))
    return out, found.complete
