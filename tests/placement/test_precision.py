"""`--precision auto`: the cheapest option that meets the accuracy floor, never one below
it, with the cost model's inputs changed as each precision changes them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from layerfleet.agent.codecs import WireFormat
from layerfleet.controller.partition.accuracy import Agreement, Choice, cheapest
from layerfleet.controller.placement.model import Device, Fleet, Link, ModelCosts
from layerfleet.controller.placement.precision import PrecisionOption, apply, plan_options


def _costs() -> ModelCosts:
    n = 6
    return ModelCosts("m", [f"l{i}" for i in range(n)], flops=[4e9] * n,
                      param_bytes=[1_000_000] * n,
                      cut_bytes=[600_000, 2_400_000, 1_200_000, 1_200_000, 600_000, 300_000,
                                 4_000],
                      activation_bytes=[1_000_000] * n)


def _fleet(bandwidth_Bps: float = 50e6 / 8) -> Fleet:
    devices = [Device(f"pi{i}", flops_per_s=5e9, memory_bytes=1 << 30) for i in range(3)]
    return Fleet(devices, default_link=Link("*", "*", bandwidth_Bps, 0.002))


SPEEDUPS = {f"pi{i}": {"int8": 2.0, "fp16": 1.0, "dynamic": 1.2} for i in range(3)}


def test_apply_scales_inner_cuts_weights_and_speed_but_not_the_clients_tensors():
    option = PrecisionOption("int8", "int8", top1=0.995)
    costs, fleet = apply(_costs(), _fleet(), option, SPEEDUPS)
    assert costs.cut_bytes[0] == 600_000 and costs.cut_bytes[-1] == 4_000
    assert costs.cut_bytes[1:-1] == [600_000, 300_000, 300_000, 150_000, 75_000]
    assert costs.param_bytes == [250_000] * 6
    assert [d.flops_per_s for d in fleet.devices] == [10e9] * 3
    measured = PrecisionOption("fp32", "fp32+lz4", top1=1.0, wire_ratio=0.6)
    costs, _ = apply(_costs(), _fleet(), measured, SPEEDUPS)
    assert costs.cut_bytes[1] == 1_440_000


def test_auto_picks_int8_when_it_meets_the_floor_and_float32_when_nothing_else_does():
    options = [PrecisionOption("fp32"), PrecisionOption("fp16", "fp16", top1=1.0),
               PrecisionOption("int8", "int8", top1=0.995)]
    ranked, refused = plan_options(_costs(), _fleet(), options, floor=0.99, speedups=SPEEDUPS)
    assert ranked[0].option.precision == "int8" and not refused
    fp32 = next(r for r in ranked if r.option.is_reference)
    assert ranked[0].placement.prediction.latency_s < fp32.placement.prediction.latency_s
    ranked, refused = plan_options(_costs(), _fleet(), options, floor=0.999, speedups=SPEEDUPS)
    assert [o.precision for o in refused] == ["int8"]
    # one device is fastest here for both, and fp16 computes at fp32's speed: a tie
    assert {r.option.precision for r in ranked} == {"fp32", "fp16"}
    unmeasured = [PrecisionOption("fp32"), PrecisionOption("int8", "int8")]
    ranked, refused = plan_options(_costs(), _fleet(), unmeasured, floor=0.0, speedups=SPEEDUPS)
    assert [r.option.precision for r in ranked] == ["fp32"], "never measured: never picked"


@settings(max_examples=60, deadline=None)
@given(top1=st.lists(st.floats(0.8, 1.0), min_size=3, max_size=3),
       floor=st.floats(0.8, 1.0), bandwidth=st.floats(1e5, 1e9))
def test_auto_never_picks_below_the_floor(top1, floor, bandwidth):
    options = [PrecisionOption("fp32"), PrecisionOption("fp16", "fp16", top1=top1[0]),
               PrecisionOption("dynamic", "int8", top1=top1[1]),
               PrecisionOption("int8", "int8+lz4", top1=top1[2], wire_ratio=0.2)]
    ranked, refused = plan_options(_costs(), _fleet(bandwidth), options, floor=floor,
                                   speedups=SPEEDUPS)
    for r in ranked:
        assert r.option.is_reference or r.option.top1 >= floor
    assert all(o.top1 < floor for o in refused)
    # and the accuracy side's rule agrees
    agreements = [Agreement(Choice(o.precision, WireFormat.parse(o.activations)), 100,
                            o.top1 if o.top1 is not None else 1.0, 0.0) for o in options]
    pick = cheapest(agreements, floor, cost=lambda a: {"fp32": 4, "fp16": 3, "dynamic": 2,
                                                       "int8": 1}[a.choice.precision])
    assert pick.top1 >= floor or pick.choice.precision == "fp32"


def test_no_option_at_all_is_a_clear_error():
    from layerfleet.controller.partition import PartitionError

    with pytest.raises(PartitionError, match="no precision meets the agreement floor 0.990"):
        cheapest([], 0.99, cost=lambda a: 0.0)
