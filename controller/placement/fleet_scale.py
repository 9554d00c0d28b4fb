"""Placement for fleets of hundreds to thousands of devices, in bounded memory and time.

The search's tables grow as D^2 (links) and D P^2 (stages): 1,000 devices would need
gigabytes. Fleets that large are mostly many boards of a few models, so:

1. Classes. Devices are grouped by their numbers rounded on a log scale (steps of
   CLASS_STEP: speed, memory, per-run overhead, busy power, and the link to the source).
2. Lower bound. Each class is replaced by its envelope: a device as good as its best member
   in every number, and links between classes as good as the best link between any two of
   their members (or the default link, where some pair has no measured link). The search's
   relaxation (devices reusable, which the envelope of a class with several members needs
   anyway) over those envelopes is a lower bound for the whole fleet: no placement of it is
   better. Any grouping keeps it valid; a finer one only makes it tighter.
3. Shortlist. The relaxation's optimum says how many stages each class would take; the
   shortlist keeps that many plus one of each such class's best members (fastest, then best
   linked), one of every other class, at most SHORTLIST devices in all.
4. The search (search.py) on the shortlist, with its node budget.

The answer carries the fleet-wide lower bound: its gap is stated, not hoped for.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from layerfleet.controller.placement import search
from layerfleet.controller.placement.cost import compute_table, link_table_from
from layerfleet.controller.placement.model import (
    Device,
    Fleet,
    ModelCosts,
    Placement,
    PlacementError,
)

FLEET_DEVICES = 48     # above this many devices up, plan on a shortlist
SHORTLIST = 64         # devices the search sees at most
CLASS_STEP = 1.10      # numbers within 10 % of each other share a class
INF = math.inf


def _buckets(x: np.ndarray) -> np.ndarray:
    """Numbers rounded on a log scale: within CLASS_STEP of each other, mostly one bucket."""
    return np.round(np.log(np.maximum(x, 1e-9)) / math.log(CLASS_STEP))


def device_classes(fleet: Fleet) -> list[list[int]]:
    """Indices of fleet.devices grouped by rounded numbers, fastest class first (classes
    of equal speed in the order of their first member). Kept with the fleet: the
    controller plans many times over one fleet of thousands."""
    key = ("device_classes", CLASS_STEP)
    if key not in fleet.derived:
        fleet.derived[key] = _classes(fleet)
    return [list(members) for members in fleet.derived[key]]


def _classes(fleet: Fleet) -> list[list[int]]:
    devices = fleet.devices
    if not devices:
        return []
    links = [fleet.link(fleet.source, d.id) for d in devices]
    numbers = np.array([[d.flops_per_s, d.memory_bytes, d.overhead_s + 1e-5, d.busy_w,
                         link.bandwidth_Bps, link.rtt_s + 1e-5, link.joules_per_byte + 1e-12]
                        for d, link in zip(devices, links)], dtype=float)
    _, first, label = np.unique(_buckets(numbers), axis=0, return_index=True,
                                return_inverse=True)
    order = np.argsort(label.ravel(), kind="stable")     # members in index order per class
    groups = np.split(order, np.cumsum(np.bincount(label.ravel()))[:-1])
    groups = [groups[c] for c in np.argsort(first, kind="stable")]   # by first appearance
    return sorted(([int(k) for k in g] for g in groups),
                  key=lambda g: -devices[g[0]].flops_per_s)


def envelope_tables(costs: ModelCosts, fleet: Fleet, classes: list[list[int]],
                    positions: list[int]) -> search.Tables:
    """Tables over class envelopes (node C is the source): every entry is at least as good
    as that of any member, so the relaxation over them bounds the whole fleet."""
    C = len(classes)
    devices = fleet.devices
    envelope = [Device(f"class-{c}", max(devices[k].flops_per_s for k in members),
                       max(devices[k].memory_bytes for k in members),
                       min(devices[k].overhead_s for k in members),
                       min(devices[k].idle_w for k in members),
                       min(devices[k].busy_w for k in members))
                for c, members in enumerate(classes)]
    node = {devices[k].id: c for c, members in enumerate(classes) for k in members}
    node[fleet.source] = C
    size = [len(m) for m in classes] + [1]
    bw = np.zeros((C + 1, C + 1))
    rtt = np.full((C + 1, C + 1), INF)
    jpb = np.full((C + 1, C + 1), INF)
    explicit: dict[tuple[int, int], set[tuple[str, str]]] = defaultdict(set)
    for link in fleet.links:
        if link.a not in node or link.b not in node or link.a == link.b:
            continue
        for a, b in ((link.a, link.b), (link.b, link.a)):
            i, j = node[a], node[b]
            explicit[(i, j)].add((a, b))
            bw[i, j] = max(bw[i, j], link.bandwidth_Bps)
            rtt[i, j] = min(rtt[i, j], link.rtt_s)
            jpb[i, j] = min(jpb[i, j], link.joules_per_byte)
    default = fleet.default_link
    for i in range(C + 1):
        for j in range(C + 1):
            pairs = size[i] * size[j] - (size[i] if i == j else 0)
            if default is not None and len(explicit[(i, j)]) < pairs:
                bw[i, j] = max(bw[i, j], default.bandwidth_Bps)
                rtt[i, j] = min(rtt[i, j], default.rtt_s)
                jpb[i, j] = min(jpb[i, j], default.joules_per_byte)
    bw = np.where(bw > 0, bw, 1e-300)   # no link at all: transfer costs inf
    pos = np.asarray(positions)
    cut = np.asarray(costs.cut_bytes, dtype=float)[pos]
    with np.errstate(divide="ignore", invalid="ignore"):
        links = link_table_from(bw, rtt, jpb, cut, same_node=True)
    for c in [*(c for c in range(C) if size[c] < 2), C]:   # a lone device runs one stage
        for table in (links.transfer, links.serialise, links.joules):
            table[c, c, :] = INF
    return search.Tables(pos, [d.id for d in envelope], compute_table(costs, envelope, pos),
                         np.array([d.busy_w for d in envelope]),
                         np.array([d.flops_per_s for d in envelope]),
                         np.array([d.overhead_s for d in envelope]),
                         np.array([costs.range_flops(0, int(p)) for p in pos]), links)


def lower_bound(costs: ModelCosts, fleet: Fleet, kind: search.Combine, w_time: float = 1.0,
                w_energy: float = 0.0, positions: list[int] | None = None) -> float:
    """No placement of the fleet over `positions` (default: every cut) scores better."""
    positions = positions or list(range(costs.n + 1))
    env = envelope_tables(costs, fleet, device_classes(fleet), positions)
    return search.relax(search.objective(env, kind, w_time, w_energy)).root


def shortlist(fleet: Fleet, classes: list[list[int]], uses: dict[int, int],
              must: tuple[str, ...] = ()) -> Fleet:
    """The devices the search sees: per class, its best members for the stages the
    relaxation gave it plus one; one member of every other class; `must` devices too."""
    devices = fleet.devices

    def rank(k: int) -> tuple[float, float]:
        link = fleet.link(fleet.source, devices[k].id)
        return (-devices[k].flops_per_s, -link.bandwidth_Bps)

    chosen: list[int] = [k for k, d in enumerate(devices) if d.id in must]
    for c in sorted(uses, key=lambda c: -uses[c]):
        members = sorted(classes[c], key=rank)
        chosen += [k for k in members[:uses[c] + 1] if k not in chosen]
    for c, members in enumerate(classes):   # classes already in rank order (fastest first)
        if c not in uses and len(chosen) < SHORTLIST:
            chosen.append(min(members, key=rank))
    chosen = list(dict.fromkeys(chosen))[:max(SHORTLIST, len(must))]
    keep = {devices[k].id for k in chosen}
    return Fleet([d for d in devices if d.id in keep], fleet.links, fleet.source,
                 fleet.default_link)


def _plan_shortlist(costs: ModelCosts, fleet: Fleet, kind: search.Combine, w_time: float,
                    w_energy: float, positions: list[int], must: tuple[str, ...] = ()
                    ) -> tuple[Fleet, float]:
    classes = device_classes(fleet)
    env = envelope_tables(costs, fleet, classes, positions)
    obj = search.objective(env, kind, w_time, w_energy)
    relaxed = search.relax(obj)
    uses: dict[int, int] = defaultdict(int)
    for c, _, _ in search.relaxed_path(obj, relaxed):
        uses[c] += 1
    return shortlist(fleet, classes, dict(uses), must), relaxed.root


def solve(costs: ModelCosts, fleet: Fleet, kind: search.Combine, objective: str,
          w_time: float, w_energy: float, positions: list[int], *,
          max_nodes: int | None = None) -> search.Solved:
    sub, bound = _plan_shortlist(costs, fleet, kind, w_time, w_energy, positions)
    t = search.tables(costs, sub, positions)
    obj = search.objective(t, kind, w_time, w_energy)
    found = search.optimise(t, obj, max_nodes=max_nodes)
    if found.value == INF:
        raise PlacementError(
            f"no placement found on the {len(sub.devices)} devices shortlisted from "
            f"{len(fleet.devices)} ({found.nodes} nodes searched)")
    proven = found.complete and found.value <= bound * (1 + 1e-12)
    best = search.to_placement(costs, fleet, t, found.path, f"fleet-{objective}", objective,
                               found.value if proven else min(bound, found.value))
    return search.Solved([best], proven)


def min_energy(costs: ModelCosts, fleet: Fleet, sla_s: float, positions: list[int],
               fastest: Placement, *, max_nodes: int = search.DEFAULT_NODES
               ) -> tuple[list[Placement], bool]:
    """Least energy under the SLA on a shortlist for energy that keeps the fastest
    placement's devices (so a feasible answer, if it is one, is never lost)."""
    sub, bound = _plan_shortlist(costs, fleet, "sum", 0.0, 1.0, positions,
                                 tuple(fastest.devices))
    found, _ = search.energy_placements(costs, sub, sla_s, positions, fastest, max_nodes)
    found = [Placement(p.stages, p.prediction, p.strategy.replace("search", "fleet"),
                       p.objective, min(bound, p.prediction.energy_j) if i == 0 else None)
             for i, p in enumerate(found)]
    return found, False
