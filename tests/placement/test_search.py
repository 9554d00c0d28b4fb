"""The branch and bound and the bottleneck's threshold search past 6 devices, the
fleet-scale bound, and SLA messages that are true.

References: brute force over every placement on small instances; the subset DP over every
subset and order (exact, and independent of the search's code) on 7 and 8 devices.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from layerfleet.controller.placement import bottleneck, dp, fleet_scale, search
from layerfleet.controller.placement.cost import fits, predict
from layerfleet.controller.placement.model import Device, Fleet, Link, ModelCosts, Stage

from .test_dp import _valid, brute_force


@st.composite
def instances(draw, devices=st.integers(1, 4), layers=st.integers(1, 7)):
    n = draw(layers)
    flops = draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n))
    params = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
    cuts = draw(st.lists(st.integers(1, 10**6), min_size=n + 1, max_size=n + 1))
    acts = draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n))
    costs = ModelCosts("m", [f"l{i}" for i in range(n)], flops, params, cuts, acts)
    d = draw(devices)
    total = costs.range_memory(0, n)
    fleet_devices = [Device(f"d{i}", flops_per_s=draw(st.floats(1e8, 1e11)),
                            memory_bytes=draw(st.integers(total // 4, total * 2)),
                            overhead_s=draw(st.floats(0, 0.002)), idle_w=1.0,
                            busy_w=draw(st.floats(2, 50)))
                     for i in range(d)]
    ids = ["client"] + [x.id for x in fleet_devices]
    links = [Link(a, b, draw(st.floats(1e5, 1e9)), draw(st.floats(0, 0.05)),
                  draw(st.floats(0, 1e-7)))
             for i, a in enumerate(ids) for b in ids[i + 1:]]
    return costs, Fleet(fleet_devices, links)


SMALL = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEVEN = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = {"latency": ("sum", 1.0, 0.0, lambda p: p.latency_s),
         "throughput": ("max", 1.0, 0.0, lambda p: 1 / p.throughput_rps),
         "weighted": ("sum", 1.0, 0.5, lambda p: p.latency_s + 0.5 * p.energy_j)}


def _search(costs, fleet, name, max_nodes=search.DEFAULT_NODES):
    kind, w_time, w_energy, _ = KINDS[name]
    t = search.tables(costs, fleet, list(range(costs.n + 1)))
    obj = search.objective(t, kind, w_time, w_energy)
    return t, search.branch_and_bound(t, obj, search.relax(obj), max_nodes=max_nodes)


@SMALL
@given(instances(), st.sampled_from(sorted(KINDS)), st.randoms(use_true_random=False))
def test_table_values_are_what_predict_says(instance, name, rng):
    """The solver's tables (cost.compute_table, cost.link_table) add up, along any
    placement, to exactly cost.predict()'s number: the formulas live in one place."""
    costs, fleet = instance
    kind, w_time, w_energy, score = KINDS[name]
    t = search.tables(costs, fleet, list(range(costs.n + 1)))
    obj = search.objective(t, kind, w_time, w_energy)
    placements = list(dp.all_placements(costs, fleet))
    stages = rng.choice(placements)
    if not fits(costs, fleet, stages):
        return
    index = {d: k for k, d in enumerate(t.ids)}
    total, holder, combine = 0.0, len(t.ids), (sum if kind == "sum" else max)
    parts = []
    for s in stages:
        k = index[s.device]
        parts += [obj.link[holder, k, s.start], obj.stage[k, s.start, s.stop]]
        holder = k
    parts.append(obj.link[holder, len(t.ids), costs.n])
    total = combine(parts)
    assert math.isclose(total, score(predict(costs, fleet, stages)), rel_tol=1e-9,
                        abs_tol=1e-15)


@SMALL
@given(instances(), st.sampled_from(sorted(KINDS)))
def test_branch_and_bound_is_the_brute_force_optimum(instance, name):
    costs, fleet = instance
    score = KINDS[name][3]
    expected = brute_force(costs, fleet, score)
    t, found = _search(costs, fleet, name)
    assert found.complete
    if expected == math.inf:
        assert found.value == math.inf
        return
    placement = search.to_placement(costs, fleet, t, found.path, "search", name)
    _valid(costs, fleet, placement)
    assert math.isclose(score(placement.prediction), expected, rel_tol=1e-9, abs_tol=1e-15)
    assert math.isclose(found.value, expected, rel_tol=1e-9, abs_tol=1e-15)


@SMALL
@given(instances(), st.floats(0.5, 3.0))
def test_energy_under_an_sla_search_is_the_brute_force_optimum(instance, slack):
    costs, fleet = instance
    fastest = brute_force(costs, fleet, lambda p: p.latency_s)
    if fastest == math.inf:
        return
    sla = fastest * slack
    expected = brute_force(costs, fleet, lambda p: p.energy_j if p.latency_s <= sla + 1e-12
                           else math.inf)
    t = search.tables(costs, fleet, list(range(costs.n + 1)))
    found = search.energy_under_sla(t, search.objective(t, "sum", 0.0, 1.0),
                                    search.objective(t, "sum", 1.0, 0.0), sla)
    assert found.complete
    if expected == math.inf:
        assert found.value == math.inf
        return
    placement = search.to_placement(costs, fleet, t, found.path, "search", "energy")
    assert placement.prediction.latency_s <= sla + 1e-12
    assert math.isclose(placement.prediction.energy_j, expected, rel_tol=1e-9, abs_tol=1e-15)


@SMALL
@given(instances(devices=st.integers(2, 4)), st.sampled_from(sorted(KINDS)),
       st.integers(1, 6))
def test_a_search_cut_short_still_bounds_the_optimum_from_below(instance, name, budget):
    costs, fleet = instance
    expected = brute_force(costs, fleet, KINDS[name][3])
    _, found = _search(costs, fleet, name, max_nodes=budget)
    assert found.lower_bound <= expected * (1 + 1e-9) + 1e-15
    assert found.value >= expected * (1 - 1e-9)
    if found.complete:
        assert found.value == pytest.approx(expected, rel=1e-9) or found.value == expected


def _exact(costs, fleet, name):
    kind, w_time, w_energy, _ = KINDS[name]
    t = search.tables(costs, fleet, list(range(costs.n + 1)))
    ranked = sorted(dp._run(search.objective(t, kind, w_time, w_energy), None).values())
    return ranked[0][0] if ranked else math.inf


@SEVEN
@given(instances(devices=st.integers(7, 8), layers=st.integers(2, 9)),
       st.sampled_from(sorted(KINDS)))
def test_seven_and_eight_devices_get_the_exact_subset_dp_optimum(instance, name):
    costs, fleet = instance
    expected = _exact(costs, fleet, name)
    score = KINDS[name][3]
    kind, w_time, w_energy, _ = KINDS[name]
    try:
        solved = dp.solve(costs, fleet, kind, name, w_time, w_energy)
    except dp.PlacementError:
        assert expected == math.inf
        return
    best = solved.placements[0]
    _valid(costs, fleet, best)
    assert best.strategy.startswith("search")
    # With the default node budget: optimal when the search completed, and always
    # bracketed by its lower bound (adversarial instances can run out of budget).
    assert best.lower_bound <= expected * (1 + 1e-9) + 1e-15
    assert score(best.prediction) >= expected * (1 - 1e-9)
    if solved.complete:
        assert math.isclose(score(best.prediction), expected, rel_tol=1e-9, abs_tol=1e-15)
    # Without a budget the search is exact.
    _, unbounded = _search(costs, fleet, name, max_nodes=10**6)
    assert unbounded.complete
    assert math.isclose(unbounded.value, expected, rel_tol=1e-9, abs_tol=1e-15)


@SEVEN
@given(instances(devices=st.just(7), layers=st.integers(2, 7)), st.floats(0.7, 2.0))
def test_seven_devices_min_energy_equals_the_exact_pareto_dp(instance, slack):
    costs, fleet = instance
    fastest = _exact(costs, fleet, "latency")
    if fastest == math.inf:
        return
    sla = fastest * slack
    exact = dp._pareto(costs, fleet, list(range(costs.n + 1)), sla)
    try:
        found = dp.min_energy(costs, fleet, sla)
    except dp.PlacementError as exc:
        assert not exact
        assert "no placement meets" in str(exc)
        return
    assert exact, "found a placement the exact DP says cannot meet the SLA"
    assert found[0].prediction.latency_s <= sla + 1e-12
    assert math.isclose(found[0].prediction.energy_j, exact[0].prediction.energy_j,
                        rel_tol=1e-9, abs_tol=1e-15)


@SEVEN
@given(instances(devices=st.just(7), layers=st.integers(2, 7)), st.floats(0.5, 1.5),
       st.integers(1, 30))
def test_the_sla_error_says_no_placement_meets_it_only_when_that_is_so(instance, slack,
                                                                        budget):
    costs, fleet = instance
    fastest = _exact(costs, fleet, "latency")
    if fastest == math.inf:
        return
    sla = fastest * slack
    try:
        found = dp.min_energy(costs, fleet, sla, max_nodes=budget)
    except dp.PlacementError as exc:
        message = str(exc)
        if message.startswith("no placement meets"):
            assert fastest > sla
            claimed = float(re.search(r"fastest possible is ([0-9.]+) ms", message)[1])
            assert claimed == pytest.approx(fastest * 1000, abs=0.051)
        else:
            assert "within the search" in message and "fastest found" in message
        return
    assert found[0].prediction.latency_s <= sla + 1e-12


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(devices=st.integers(7, 8), layers=st.integers(4, 9)))
def test_throughput_on_eight_devices_is_the_exact_bottleneck(instance):
    """The bottleneck is where the search leans on its capacity bound: check it more."""
    costs, fleet = instance
    expected = _exact(costs, fleet, "throughput")
    _, found = _search(costs, fleet, "throughput", max_nodes=10**6)
    assert found.value == pytest.approx(expected, rel=1e-9) or found.value == expected


def _least_bottleneck(costs, fleet, max_nodes=bottleneck.DEFAULT_NODES):
    t = search.tables(costs, fleet, list(range(costs.n + 1)))
    obj = search.objective(t, "max")
    return t, bottleneck.least_bottleneck(t, obj, search.relax(obj), max_nodes=max_nodes)


def _seconds_per_request(p):
    return 1 / p.throughput_rps


@SMALL
@given(instances())
def test_the_threshold_search_finds_the_brute_force_least_bottleneck(instance):
    costs, fleet = instance
    expected = brute_force(costs, fleet, _seconds_per_request)
    t, found = _least_bottleneck(costs, fleet)
    assert found.complete
    if expected == math.inf:
        assert found.value == math.inf
        return
    placement = search.to_placement(costs, fleet, t, found.path, "search", "throughput")
    _valid(costs, fleet, placement)
    assert math.isclose(_seconds_per_request(placement.prediction), expected, rel_tol=1e-9)
    assert math.isclose(found.value, expected, rel_tol=1e-9)
    assert found.lower_bound == found.value


@SMALL
@given(instances(devices=st.integers(2, 4)), st.integers(1, 8))
def test_a_threshold_search_cut_short_still_brackets_the_least_bottleneck(instance, budget):
    costs, fleet = instance
    expected = brute_force(costs, fleet, _seconds_per_request)
    _, found = _least_bottleneck(costs, fleet, max_nodes=budget)
    assert found.lower_bound <= expected * (1 + 1e-9)
    assert found.value >= expected * (1 - 1e-9)
    if found.complete:
        assert found.value == pytest.approx(expected, rel=1e-9) or found.value == expected


def test_a_state_that_failed_fails_with_more_devices_used_not_with_fewer():
    failed = [0b0011]                                   # failed with devices 0 and 1 used
    assert bottleneck.known_to_fail(failed, 0b0011)
    assert bottleneck.known_to_fail(failed, 0b1011)     # 3 used as well: fewer left
    assert not bottleneck.known_to_fail(failed, 0b0001)  # 1 still free: may finish
    assert not bottleneck.known_to_fail(failed, 0b1001)
    assert not bottleneck.known_to_fail([], 0b1111)


def heterogeneous(rng, n_devices, layers=(6, 12)):
    """A fleet as users build them (bench/placement_bench.py's generator): speeds over two
    orders of magnitude, memory that often forces a split, per-device uplinks, half the
    device pairs measured and a default link for the rest."""
    n = rng.randint(*layers)
    costs = ModelCosts("random", [f"l{i}" for i in range(n)],
                       [rng.randint(10**6, 10**9) for _ in range(n)],
                       [rng.randint(0, 4 * 10**6) for _ in range(n)],
                       [rng.randint(10**3, 10**6) for _ in range(n + 1)],
                       [rng.randint(10**3, 10**6) for _ in range(n)])
    total = costs.range_memory(0, n)
    devices = [Device(f"d{i}", rng.uniform(1e9, 1e11), rng.randint(total // 3, total * 2),
                      rng.uniform(0.0002, 0.002), 2.0, rng.uniform(3, 60))
               for i in range(n_devices)]
    links = [Link("client", d.id, rng.uniform(1e6, 1e8), rng.uniform(0.001, 0.04),
                  rng.uniform(0, 1e-7)) for d in devices]
    links += [Link(a.id, b.id, rng.uniform(1e6, 1.2e8), rng.uniform(0.0005, 0.01),
                   rng.uniform(0, 1e-7)) for i, a in enumerate(devices)
              for b in devices[i + 1:] if rng.random() < 0.5]
    return costs, Fleet(devices, links, default_link=Link("*", "*", 5e7, 0.002, 1e-8))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(7, 8))
def test_the_threshold_search_on_heterogeneous_fleets_is_the_exact_least_bottleneck(
        rng, devices):
    """Searches deep enough that states fail and are remembered across thresholds."""
    costs, fleet = heterogeneous(rng, devices)
    expected = _exact(costs, fleet, "throughput")
    _, found = _least_bottleneck(costs, fleet, max_nodes=10**6)
    assert found.complete
    assert found.value == pytest.approx(expected, rel=1e-9) or found.value == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(devices=st.integers(7, 8), layers=st.integers(4, 9)))
def test_the_threshold_search_on_eight_devices_is_the_exact_least_bottleneck(instance):
    costs, fleet = instance
    expected = _exact(costs, fleet, "throughput")
    _, found = _least_bottleneck(costs, fleet, max_nodes=10**6)
    assert found.complete
    assert found.value == pytest.approx(expected, rel=1e-9) or found.value == expected
    # The plan the controller makes (default budget): optimal when it says so, and
    # bracketed by its bound otherwise.
    best = dp.max_throughput(costs, fleet)[0] if expected < math.inf else None
    if best is not None:
        assert best.lower_bound <= expected * (1 + 1e-9)
        assert _seconds_per_request(best.prediction) >= expected * (1 - 1e-9)


def test_the_sla_message_claims_only_what_was_proven():
    quick = dp.min_latency(*_tiny())[0]
    proven = dp._sla_message(0.001, quick, proven=True, all_positions=True)
    assert proven.startswith("no placement meets the 1.0 ms SLA: the fastest possible is")
    for message in (dp._sla_message(0.001, quick, proven=False, all_positions=True),
                    dp._sla_message(0.001, quick, proven=False, all_positions=False)):
        assert message.startswith("no placement found within the search")
        assert f"fastest found is {quick.prediction.latency_s * 1000:.1f} ms" in message
    assert "among the candidate cuts" in dp._sla_message(0.001, quick, proven=True,
                                                         all_positions=False)


def _tiny():
    costs = ModelCosts("m", ["a"], [10**9], [10], [10, 10], [10])
    return costs, Fleet([Device("d0", 1e10, 10**6, 0.0)], default_link=Link("*", "*", 1e12, 0))


def test_the_fleet_scale_bound_never_exceeds_the_optimum(monkeypatch):
    """Class envelopes bound the fleet from below whatever the grouping: coarse classes
    (everything within 1000x shares one) on random small fleets, against brute force."""
    monkeypatch.setattr(fleet_scale, "CLASS_STEP", 1000.0)

    @SMALL
    @given(instances(devices=st.integers(2, 4), layers=st.integers(1, 6)),
           st.sampled_from(sorted(KINDS)))
    def check(instance, name):
        costs, fleet = instance
        kind, w_time, w_energy, score = KINDS[name]
        expected = brute_force(costs, fleet, score)
        bound = fleet_scale.lower_bound(costs, fleet, kind, w_time, w_energy)
        assert bound <= expected * (1 + 1e-9) + 1e-15

    check()


@st.composite
def mixed_classes(draw):
    """Fleets for coarse classes: devices (and their uplinks, and the links measured
    between some pairs) unlike each other, so one envelope stands for unlike members."""
    costs, fleet = draw(instances(devices=st.integers(2, 4), layers=st.integers(1, 5)))
    ids = [d.id for d in fleet.devices]
    links = [l for l in fleet.links if l.a == "client" or l.b == "client"]
    links += [l for l in fleet.links if l.a in ids and l.b in ids and draw(st.booleans())]
    lan = Link("*", "*", draw(st.floats(1e5, 1e9)), draw(st.floats(0, 0.05)),
               draw(st.floats(0, 1e-7)))
    return costs, Fleet(fleet.devices, links, default_link=lan)


def test_class_envelopes_take_the_best_member_in_every_number(monkeypatch):
    """The envelope of a class must be as fast, as roomy, as quick to start and as frugal
    as its best member (and its links as good as the best pair's): built from any worse
    member, the bound passes the optimum of fleets whose classes mix unlike devices."""
    monkeypatch.setattr(fleet_scale, "CLASS_STEP", 1e12)   # (nearly) one class

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mixed_classes(), st.sampled_from(sorted(KINDS)))
    def check(instance, name):
        costs, fleet = instance
        classes = fleet_scale.device_classes(fleet)
        assume(any(len(members) > 1 for members in classes))
        kind, w_time, w_energy, score = KINDS[name]
        expected = brute_force(costs, fleet, score)
        bound = fleet_scale.lower_bound(costs, fleet, kind, w_time, w_energy)
        assert bound <= expected * (1 + 1e-9) + 1e-15

    check()


def _big_fleet(size: int) -> Fleet:
    devices = [Device(f"pi-{i}", (2.5e9, 6e9, 15e9)[i % 3] * (1 + (i % 7) / 100),
                      int((0.6e9, 1.5e9, 3e9)[i % 3]), 0.0005) for i in range(size)]
    links = [Link("client", d.id, 12.5e6 * (1 + (i % 5) / 10), 0.002)
             for i, d in enumerate(devices)]
    return Fleet(devices, links, default_link=Link("*", "*", 117e6, 0.0005))


def test_a_fleet_of_hundreds_is_planned_on_a_shortlist_within_its_stated_bound():
    n = 120
    costs = ModelCosts("big", [f"l{i}" for i in range(n)],
                       [10**8 * (1 + i % 7) for i in range(n)], [4 * 10**6] * n,
                       [10**5 + (i % 13) * 10**4 for i in range(n + 1)], [10**5] * n)
    fleet = _big_fleet(300)
    for solve, score in ((dp.min_latency, lambda p: p.latency_s),
                         (dp.max_throughput, lambda p: 1 / p.throughput_rps)):
        best = solve(costs, fleet)[0]
        _valid(costs, fleet, best)
        assert best.strategy.startswith("fleet")
        assert 0 < best.lower_bound <= score(best.prediction) * (1 + 1e-12)
    # Throughput needs many devices: the shortlist must have offered them.
    assert len(dp.max_throughput(costs, fleet)[0].stages) > 5


def test_a_device_class_keeps_exactly_identical_devices_together():
    fleet = _big_fleet(60)
    classes = fleet_scale.device_classes(fleet)
    assert sorted(k for c in classes for k in c) == list(range(60))
    for members in classes:
        speeds = [fleet.devices[k].flops_per_s for k in members]
        assert max(speeds) / min(speeds) < fleet_scale.CLASS_STEP ** 1.01
    assert len(classes) < 60


def test_a_proven_infeasible_sla_names_the_true_fastest_latency():
    # One layer of 1 GFLOP; the fastest device needs 100 ms; an SLA of 50 ms cannot be met.
    costs = ModelCosts("m", ["a"], [10**9], [10], [10, 10], [10])
    fleet = Fleet([Device(f"d{i}", 1e10 / (i + 1), 10**6, 0.0) for i in range(8)],
                  default_link=Link("*", "*", 1e12, 0.0))
    with pytest.raises(dp.PlacementError, match=r"no placement meets the 50.0 ms SLA: the "
                                                r"fastest possible is 100.0 ms"):
        dp.min_energy(costs, fleet, 0.050)
    # The stage that fits: every stage is layer 0 on one device, so the answer is d0.
    assert [s.device for s in dp.min_energy(costs, fleet, 0.2)[0].stages] == ["d0"] or \
        fits(costs, fleet, [Stage(0, 1, "d0")])
