"""The throughput objective (the least bottleneck) by a search on the bottleneck's value.

A placement's bottleneck is the cost of one of its stages or links, so the optimum is one
of the finite values in the tables. For a threshold B the question "is there a placement
whose every stage and link costs at most B?" is a yes/no search that prunes far harder
than a branch and bound on costs can:

- a stage or link above B is simply absent;
- reaching the end with devices reusable (search.relax's min-max cost-to-go <= B) is
  necessary, so (cut, device) pairs that cannot are never entered;
- capacity: each device can run at most `cap_k(B)` FLOPs in one stage (the largest range
  that fits its memory within B), so the FLOPs after a cut must be at most the sum of the
  caps of the devices still unused;
- a state (cut, device holding it, devices used) that failed once fails again: memoised.

Yes at B gives a placement (whose bottleneck may be below B); no, searched to the end,
proves every value <= B infeasible. A binary search over the sorted values between the
proven lower bound and the best placement found closes the gap; each answer is exact
unless the node budget runs out, and then the answer carries the least value not yet
ruled out as its lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from layerfleet.controller.placement.search import Found, Objective, Path, Relaxed, Tables

INF = math.inf
DEFAULT_NODES = 4000    # expanded states over all thresholds (deterministic, not a clock)


Failed = dict[tuple[int, int], list[int]]   # (cut, device holding it) -> used sets


@dataclass(frozen=True)
class _Check:
    path: Path | None       # a placement within the threshold
    proven: bool            # no placement within it (searched to the end)
    nodes: int
    failed: Failed          # states that cannot finish within the threshold


class _Threshold:
    """The yes/no search at one threshold B. `failed` holds states known to fail at a
    threshold at least as large (they fail at B too)."""

    def __init__(self, t: Tables, obj: Objective, relaxed: Relaxed, b: float,
                 failed: Failed) -> None:
        D, P = obj.stage.shape[0], obj.stage.shape[1]
        self.D, self.P = D, P
        self.stage_ok = obj.stage <= b                     # [D, P, P]
        self.link_ok = obj.link <= b                       # [D + 1, D + 1, P]
        self.go_ok = relaxed.to_go.T <= b                  # [D, P]: can still finish
        span = t.flops_to[None, :] - t.flops_to[:, None]
        self.cap = np.where(self.stage_ok, span[None], 0.0).max(axis=(1, 2))   # [D]
        self.rest = t.flops_to[-1] - t.flops_to            # [P] FLOPs after each cut
        self.failed: Failed = {key: list(sets) for key, sets in failed.items()}
        self.nodes = 0
        self.budget = 0

    def run(self, budget: int) -> _Check:
        self.budget = budget
        try:
            path = self._dive(0, self.D, 0, float(self.cap.sum()), ())
        except _OutOfNodes:
            return _Check(None, False, self.nodes, {})
        return _Check(path, path is None, self.nodes, self.failed)

    def _dive(self, q: int, holder: int, used: int, free_cap: float, path: Path
              ) -> Path | None:
        if self.nodes >= self.budget:
            raise _OutOfNodes
        self.nodes += 1
        D, P = self.D, self.P
        ok = self.link_ok[holder, :D, q][:, None] & self.stage_ok[:, q, :] & self.go_ok
        if used:
            ok[[k for k in range(D) if used >> k & 1]] = False
        last = np.flatnonzero(ok[:, P - 1])
        if len(last):
            return (*path, (int(last[0]), q, P - 1))
        ks, rs = np.nonzero(ok[:, :P - 1])
        if not len(ks):
            return None
        left = free_cap - self.cap[ks]
        keep = self.rest[rs] <= left * (1 + 1e-9)
        ks, rs, left = ks[keep], rs[keep], left[keep]
        # Farthest cut first; among devices reaching it, the one with least capacity
        # (keep the strong devices for what is left).
        for i in np.lexsort((self.cap[ks], -rs)):
            k, r = int(ks[i]), int(rs[i])
            now_used = used | 1 << k
            failed = self.failed.setdefault((r, k), [])
            if known_to_fail(failed, now_used):
                continue
            found = self._dive(r, k, now_used, float(left[i]), (*path, (k, q, r)))
            if found is not None:
                return found
            failed.append(now_used)
        return None


class _OutOfNodes(Exception):
    pass


def known_to_fail(failed: list[int], used: int) -> bool:
    """A state (cut, device) that could not finish with the devices of `s` used cannot
    finish with more of them used either (it has fewer left): used sets are bit masks."""
    return any(s & ~used == 0 for s in failed)


def value_of(obj: Objective, path: Path) -> float:
    """The bottleneck of a placement given as (device, from, to) steps."""
    D, P = obj.stage.shape[0], obj.stage.shape[1]
    worst, holder = 0.0, D
    for k, p, q in path:
        worst = max(worst, float(obj.link[holder, k, p]), float(obj.stage[k, p, q]))
        holder = k
    return max(worst, float(obj.link[holder, D, P - 1]))


def least_bottleneck(t: Tables, obj: Objective, relaxed: Relaxed, *,
                     incumbent: tuple[float, Path] | None = None,
                     max_nodes: int = DEFAULT_NODES) -> Found:
    """The placement with the least bottleneck (obj.combine == "max")."""
    best, best_path = incumbent if incumbent is not None else (INF, ())
    floor = relaxed.root
    finite = np.concatenate([obj.stage[np.isfinite(obj.stage)],
                             obj.link[np.isfinite(obj.link)]])
    values = np.unique(finite[finite >= floor * (1 - 1e-12)])
    nodes = 0
    lo, hi = 0, int(np.searchsorted(values, best))   # the optimum is in values[lo:hi] or best
    proven_lo = lo
    first = True
    # States that failed at a threshold where a placement was then found: every later
    # threshold is below that one, so they fail there too.
    carried: Failed = {}
    while lo < hi and nodes < max_nodes:
        # The first threshold is the largest open one, so some placement is found early.
        mid = hi - 1 if first and best == INF else (lo + hi) // 2
        first = False
        check = _Threshold(t, obj, relaxed, float(values[mid]), carried).run(max_nodes - nodes)
        nodes += check.nodes
        if check.path is not None:
            carried = check.failed
            value = value_of(obj, check.path)
            if value < best:
                best, best_path = value, check.path
            hi = min(mid, int(np.searchsorted(values, best)))
        elif check.proven:
            lo = mid + 1
            proven_lo = max(proven_lo, lo)
        else:
            break
    complete = proven_lo >= hi
    lower = best if complete else float(values[proven_lo])
    return Found(best, best_path, min(lower, best), complete, nodes)

