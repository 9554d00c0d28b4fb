"""The cost model on hand-computed examples, baselines by definition, re-planning hysteresis."""

from __future__ import annotations

import pytest
from layerfleet.controller.placement.baselines import best_split, memory_split, whole_in_cloud
from layerfleet.controller.placement.cost import predict
from layerfleet.controller.placement.model import Device, Fleet, Link, ModelCosts, Stage
from layerfleet.controller.placement.plan import Observation, ReplanState, plan, should_replan

# Two layers of 1 GFLOP; 1 MB crosses the middle cut, 100 kB in, 10 kB out.
COSTS = ModelCosts("m", ["a", "b"], [10**9, 10**9], [1000, 1000],
                   [100_000, 1_000_000, 10_000], [1_000_000, 10_000])
PI = Device("pi", flops_per_s=1e9, memory_bytes=10**8, overhead_s=0.0, busy_w=6.0)
CLOUD = Device("cloud", flops_per_s=1e10, memory_bytes=10**10, overhead_s=0.0, busy_w=100.0,
               is_cloud=True)
FLEET = Fleet([PI, CLOUD], [Link("client", "pi", 1e7, 0.002),
                            Link("client", "cloud", 1e6, 0.040),
                            Link("pi", "cloud", 1e6, 0.040, joules_per_byte=1e-6)])


def test_latency_is_transfers_plus_compute_by_hand():
    pred = predict(COSTS, FLEET, [Stage(0, 1, "pi"), Stage(1, 2, "cloud")])
    transfer_in = 0.001 + 100_000 / 1e7           # client -> pi
    first = 1.0                                     # 1 GFLOP at 1 GFLOP/s
    middle = 0.020 + 1_000_000 / 1e6                # pi -> cloud
    second = 0.1
    back = 0.020 + 10_000 / 1e6                     # cloud -> client
    assert pred.latency_s == pytest.approx(transfer_in + first + middle + second + back)
    assert pred.throughput_rps == pytest.approx(1 / 1.0)  # the 1 MB link and the pi tie
    assert pred.energy_j == pytest.approx(6.0 * 1.0 + 100.0 * 0.1 + 1_000_000 * 1e-6)
    assert [l[:3] for l in pred.links] == [("client", "pi", 100_000), ("pi", "cloud", 1_000_000),
                                           ("cloud", "client", 10_000)]


def test_balanced_replicas_add_capacity_hedged_replicas_cut_latency():
    twin = Device("pi2", flops_per_s=1e9, memory_bytes=10**8, overhead_s=0.0, busy_w=6.0)
    fleet = Fleet([PI, twin], default_link=Link("*", "*", 1e9, 0.0))
    one = predict(COSTS, fleet, [Stage(0, 2, "pi")])
    two = predict(COSTS, fleet, [Stage(0, 2, "pi", ("pi2",))], mode="balanced")
    assert two.throughput_rps == pytest.approx(2 * one.throughput_rps)
    assert two.latency_s == pytest.approx(one.latency_s)
    hedged = predict(COSTS, fleet, [Stage(0, 2, "pi", ("pi2",))], mode="hedged")
    assert hedged.energy_j == pytest.approx(2 * one.energy_j)
    assert hedged.throughput_rps == pytest.approx(one.throughput_rps)


def test_baselines_follow_their_definitions():
    cloud = whole_in_cloud(COSTS, FLEET, "latency")
    assert [(s.start, s.stop, s.device) for s in cloud.stages] == [(0, 2, "cloud")]
    split = best_split(COSTS, FLEET, "latency")
    assert len(split.stages) == 2 and split.stages[1].device == "cloud"
    mem = memory_split(COSTS, FLEET, "latency")
    assert [s.device for s in mem.stages][0] == "pi"


def test_plan_is_never_worse_than_any_baseline_and_lists_distinct_candidates():
    from layerfleet.controller.placement.plan import compare_baselines

    for objective in ("latency", "throughput", "energy"):
        sla = 10.0 if objective == "energy" else None
        found = plan(COSTS, FLEET, objective=objective, sla_s=sla, top_k=5)
        assert len({p.key() for p in found}) == len(found) > 1
        best = found[0].prediction.objective(objective, sla)
        for name, baseline in compare_baselines(COSTS, FLEET, objective, sla).items():
            if baseline is not None:
                assert best <= baseline.prediction.objective(objective, sla) + 1e-12, name


def _placement():
    return plan(COSTS, FLEET, objective="latency")[0]


def test_a_device_going_down_replans_at_once():
    current = _placement()
    fleet = Fleet([Device(d.id, d.flops_per_s, d.memory_bytes, up=d.id not in current.devices)
                   for d in FLEET.devices], FLEET.links)
    decision = should_replan(current, fleet, [], ReplanState(), now=0.0)
    assert decision.replan and "down" in decision.reason


def test_a_speed_drift_replans_only_when_sustained_and_never_flaps():
    current = _placement()
    device = current.devices[0]
    base = FLEET.device(device).flops_per_s
    state = ReplanState()
    decisions = []
    # Oscillating measurements: 50% slow for 10 s, normal for 10 s, ... for 5 minutes.
    for t in range(0, 300, 5):
        speed = base * (0.5 if (t // 10) % 2 == 0 else 1.0)
        decisions.append(should_replan(current, FLEET, [Observation(t, device, speed)], state,
                                       now=float(t), sustain_s=30).replan)
    assert not any(decisions)
    # A sustained slowdown: re-plan once after 30 s, then not again during the cooldown.
    decisions = [should_replan(current, FLEET, [Observation(t, device, base * 0.5)], state,
                               now=float(300 + t), sustain_s=30, cooldown_s=60).replan
                 for t in range(0, 60, 5)]
    assert decisions.count(True) == 1 and decisions.index(True) == 6
