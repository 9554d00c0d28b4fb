"""Drift estimates: one disturbed measurement moves nothing, a device that stays slower does."""

from __future__ import annotations

from layerfleet.controller.calibrate import ESTIMATE_OF, Drift


def test_a_speed_estimate_needs_a_few_measurements_and_ignores_one_outlier():
    drift = Drift()
    for t, speed in enumerate([10e9] * (ESTIMATE_OF - 1)):
        drift.record("pi", speed, float(t))
    assert drift.estimate("pi") is None and drift.observations() == []
    drift.record("pi", 2e9, 10.0)   # a neighbour's burst during one benchmark
    estimate = drift.estimate("pi")
    assert estimate.flops_per_s == 10e9 and estimate.time == 10.0
    drift.record("pi", 2.5e9, 11.0)   # ... and again: the device is slower now
    assert drift.estimate("pi").flops_per_s == 2.5e9
    assert [o.device for o in drift.observations()] == ["pi"]
