"""Each dynamic program returns exactly the brute-force optimum of the problem its
docstring states, on random instances small enough to enumerate; constraints always hold."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from layerfleet.controller.placement import dp
from layerfleet.controller.placement.cost import fits, predict
from layerfleet.controller.placement.gnh import nominate
from layerfleet.controller.placement.model import Device, Fleet, Link, ModelCosts


@st.composite
def instances(draw):
    n = draw(st.integers(1, 9))
    flops = draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n))
    params = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
    cuts = draw(st.lists(st.integers(1, 10**6), min_size=n + 1, max_size=n + 1))
    acts = draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n))
    costs = ModelCosts("m", [f"l{i}" for i in range(n)], flops, params, cuts, acts)
    d = draw(st.integers(1, 4))
    total = costs.range_memory(0, n)
    devices = [Device(f"d{i}", flops_per_s=draw(st.floats(1e8, 1e11)),
                      memory_bytes=draw(st.integers(total // 4, total * 2)),
                      overhead_s=draw(st.floats(0, 0.002)), idle_w=1.0,
                      busy_w=draw(st.floats(2, 50)), is_cloud=i == 0 and draw(st.booleans()))
               for i in range(d)]
    ids = ["client"] + [x.id for x in devices]
    links = [Link(a, b, draw(st.floats(1e5, 1e9)), draw(st.floats(0, 0.05)),
                  draw(st.floats(0, 1e-7)))
             for i, a in enumerate(ids) for b in ids[i + 1:]]
    return costs, Fleet(devices, links)


def brute_force(costs, fleet, score):
    best = math.inf
    for stages in dp.all_placements(costs, fleet):
        if fits(costs, fleet, stages):
            best = min(best, score(predict(costs, fleet, stages)))
    return best


def _valid(costs, fleet, placement):
    stages = placement.stages
    assert stages[0].start == 0 and stages[-1].stop == costs.n
    assert all(a.stop == b.start and a.start < a.stop for a, b in zip(stages, stages[1:]))
    assert len(set(placement.devices)) == len(placement.devices)  # each device once
    assert fits(costs, fleet, stages)


def _check(costs, fleet, solve, score):
    expected = brute_force(costs, fleet, score)
    try:
        found = solve(costs, fleet)
    except dp.PlacementError:
        assert expected == math.inf
        return
    for placement in found:
        _valid(costs, fleet, placement)
    assert math.isclose(score(found[0].prediction), expected, rel_tol=1e-9, abs_tol=1e-15)


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(instances())
def test_min_latency_is_the_brute_force_optimum(instance):
    _check(*instance, dp.min_latency, lambda p: p.latency_s)


@SETTINGS
@given(instances())
def test_max_throughput_is_the_brute_force_optimum(instance):
    _check(*instance, dp.max_throughput, lambda p: 1 / p.throughput_rps)


@SETTINGS
@given(instances())
def test_weighted_is_the_brute_force_optimum(instance):
    _check(*instance, lambda c, f: dp.weighted(c, f, 1.0, 0.5),
           lambda p: p.latency_s + 0.5 * p.energy_j)


@SETTINGS
@given(instances(), st.floats(0.2, 3.0))
def test_min_energy_under_an_sla_is_the_brute_force_optimum(instance, slack):
    costs, fleet = instance
    fastest = brute_force(costs, fleet, lambda p: p.latency_s)
    if fastest == math.inf:
        return
    sla = fastest * slack
    score = lambda p: p.energy_j if p.latency_s <= sla + 1e-12 else math.inf  # noqa: E731
    expected = brute_force(costs, fleet, score)
    try:
        found = dp.min_energy(costs, fleet, sla)
    except dp.PlacementError:
        assert expected == math.inf
        return
    assert found[0].prediction.latency_s <= sla + 1e-12
    _valid(costs, fleet, found[0])
    assert math.isclose(found[0].prediction.energy_j, expected, rel_tol=1e-9, abs_tol=1e-15)


@SETTINGS
@given(instances())
def test_gnh_never_makes_the_objective_worse_and_keeps_devices_unique(instance):
    costs, fleet = instance
    try:
        base = dp.max_throughput(costs, fleet)[0]
    except dp.PlacementError:
        return
    better = nominate(costs, fleet, base, "throughput")
    assert better.prediction.throughput_rps >= base.prediction.throughput_rps - 1e-9
    assert len(set(better.devices)) == len(better.devices)
    assert fits(costs, fleet, better.stages)


def test_the_heuristic_for_large_fleets_still_respects_every_constraint():
    n = 150
    costs = ModelCosts("big", [f"l{i}" for i in range(n)], [10**7 * (1 + i % 7) for i in range(n)],
                       [10**5] * n, [10**5 + (i % 13) * 10**4 for i in range(n + 1)], [10**5] * n)
    devices = [Device(f"d{i}", 1e9 * (1 + i % 5), 6 * 10**6) for i in range(20)]
    fleet = Fleet(devices, default_link=Link("*", "*", 12.5e6, 0.002))
    for solve in (dp.min_latency, dp.max_throughput):
        found = solve(costs, fleet)
        _valid(costs, fleet, found[0])


def test_a_model_too_big_for_every_device_names_the_layer_and_the_device():
    costs = ModelCosts("m", ["a", "huge"], [1, 1], [10, 10**9], [1, 1, 1], [1, 1])
    fleet = Fleet([Device("pi", 1e9, 10**6)], default_link=Link("*", "*", 1e6, 0.001))
    try:
        dp.min_latency(costs, fleet)
    except dp.PlacementError as exc:
        assert "huge" in str(exc) and "pi" in str(exc)
    else:
        raise AssertionError("expected PlacementError")
