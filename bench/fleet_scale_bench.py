"""Planning and the control plane at fleet scale.

    python bench/fleet_scale_bench.py plan      plan time, peak memory and gap to a lower bound
    python bench/fleet_scale_bench.py agents [--agents N] [--processes P] [--seconds S]
                                                10,000 simulated agents heartbeating while the
                                                API is timed
    python bench/fleet_scale_bench.py           both

plan: InceptionV3 (312 layers) and MobileNetV2 (155 layers), profiles from
bench/results/profiles/, over simulated fleets of 20, 100 and 1,000 devices (Pi 3/4/5,
Jetson-class boards and cloud VMs, each device's speed and uplink jittered as calibration
would measure them). Each plan runs in a fresh process so its peak memory (ru_maxrss) is its
own; the lower bound (fleet_scale.lower_bound over every cut and every device) says how far
from the optimum the answer can be.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, write
from layerfleet.controller.placement.model import Device, Fleet, Link

GB = 1e9
# (name, FLOP/s, free memory, overhead s, idle W, busy W, uplink bit/s, share of the fleet)
KINDS = [("pi3", 2.5e9, 0.6 * GB, 0.0008, 1.9, 5.1, 50e6, 0.25),
         ("pi4", 6e9, 1.5 * GB, 0.0005, 2.7, 6.4, 100e6, 0.40),
         ("pi5", 15e9, 3 * GB, 0.0004, 3.0, 9.0, 200e6, 0.25),
         ("jetson", 60e9, 6 * GB, 0.0004, 5.0, 15.0, 300e6, 0.09),
         ("cloud", 300e9, 16 * GB, 0.0002, 60.0, 200.0, 50e6, 0.01)]
LAN = Link("*", "*", 940e6 / 8, 0.0005, 1e-8)
GOALS = {(155, 20): 0.050, (312, 100): 0.200, (312, 1000): 1.0}
MEMORY_GOAL = 500e6


def fleet(size: int, seed: int = 7) -> Fleet:
    """`size` devices in KINDS' shares (at least one cloud VM), speeds within +-5 % and
    uplinks within +-10 % of their kind's figure, as calibration measures them."""
    rng = random.Random(seed)
    counts = [max(1, round(share * size)) for *_, share in KINDS]
    counts[1] += size - sum(counts)
    devices, links = [], []
    for (name, flops, mem, overhead, idle, busy, uplink, _), count in zip(KINDS, counts):
        for i in range(count):
            d = Device(f"{name}-{i}", flops * rng.uniform(0.95, 1.05), int(mem), overhead,
                       idle, busy, is_cloud=name == "cloud")
            devices.append(d)
            rtt = 0.030 if name == "cloud" else 0.002
            links.append(Link("client", d.id, uplink / 8 * rng.uniform(0.9, 1.1), rtt, 5e-8))
    clouds = [d.id for d in devices if d.is_cloud]
    links += [Link(d.id, c, 50e6 / 8, 0.035, 5e-8) for d in devices if not d.is_cloud
              for c in clouds]
    return Fleet(devices, links, source="client", default_link=LAN)


def costs_of(name: str):  # type: ignore[no-untyped-def]
    from layerfleet.controller.partition.profile import ModelProfile
    from layerfleet.controller.placement.model import ModelCosts

    profile = json.loads((RESULTS / "profiles" / f"{name}.json").read_text())
    return ModelCosts.from_profile(ModelProfile.from_dict(profile))


def plan_once(model: str, size: int, objective: str) -> dict:
    """In this process: plan (as the controller does, baselines included), time it, and
    bound it. Prints one JSON line."""
    from layerfleet.controller.placement import fleet_scale
    from layerfleet.controller.placement.plan import plan

    costs = costs_of(model)
    f = fleet(size)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        best = plan(costs, f, objective=objective)[0]
        times.append(time.perf_counter() - started)
    kind = "max" if objective == "throughput" else "sum"
    started = time.perf_counter()
    bound = fleet_scale.lower_bound(costs, f, kind)
    bound_s = time.perf_counter() - started
    value = best.prediction.objective(objective)
    return {"model": model, "layers": costs.n, "devices": size, "objective": objective,
            "plan_s": statistics.median(times), "plan_s_max": max(times),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "value": value, "lower_bound_all_cuts": bound, "gap": value / bound - 1,
            "bound_s": bound_s, "strategy": best.strategy, "stages": len(best.stages),
            "solver_lower_bound": best.lower_bound}


def bench_plan() -> list[dict]:
    rows = []
    print(f"{'model':<12}{'layers':>7}{'devices':>8} {'objective':<11}{'plan ms':>9}"
          f"{'goal ms':>9}{'peak MB':>9}{'stages':>7}{'gap to bound':>14}")
    for model, size in (("MobileNetV2", 20), ("InceptionV3", 100), ("InceptionV3", 1000)):
        for objective in ("latency", "throughput"):
            out = subprocess.run([sys.executable, __file__, "plan-one", model, str(size),
                                  objective], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            goal = GOALS.get((row["layers"], size))
            row["goal_s"] = goal
            rows.append(row)
            print(f"{model:<12}{row['layers']:>7}{size:>8} {objective:<11}"
                  f"{row['plan_s'] * 1000:>9.1f}{(goal or 0) * 1000:>9.0f}"
                  f"{row['peak_rss_bytes'] / 1e6:>9.0f}{row['stages']:>7}"
                  f"{row['gap']:>13.1%}")
    worst = max(rows, key=lambda r: r["plan_s"] / (r["goal_s"] or 1))
    print(f"\nslowest against its goal: {worst['model']} x {worst['devices']} "
          f"({worst['objective']}): {worst['plan_s'] * 1000:.0f} ms vs "
          f"{worst['goal_s'] * 1000:.0f} ms; peak memory max "
          f"{max(r['peak_rss_bytes'] for r in rows) / 1e6:.0f} MB (goal "
          f"{MEMORY_GOAL / 1e6:.0f} MB, the interpreter with numpy included)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all",
                        choices=["all", "plan", "agents", "plan-one"])
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", default="", help="results file name (default by what ran)")
    args = parser.parse_args()
    if args.what == "plan-one":
        model, size, objective = args.rest
        print(json.dumps(plan_once(model, int(size), objective)))
        return
    data: dict = {}
    if args.what in ("all", "plan"):
        data["plan"] = bench_plan()
    if args.what in ("all", "agents"):
        from fleet_agents import bench_agents

        data["agents"] = bench_agents(args.agents, args.processes, args.seconds)
    write(args.out or ("fleet_scale_bench" if args.what == "all"
                       else f"fleet_scale_bench_{args.what}"), data)


if __name__ == "__main__":
    main()
