"""Which precision to deploy at: the cost model's inputs as each precision changes them, and
the choice `--precision auto` makes. Pure functions over typed data.

A `PrecisionOption` is a shard precision with a hop encoding, its measured top-1 agreement
with float32 (partition/accuracy.py) and what it does to the numbers the solvers use: each
device computes at its calibrated speed-up for that precision, each cut between stages
carries its encoded bytes (cost.py: precision_flops_per_s, encoded_bytes). `plan_options`
plans every option that meets the accuracy floor with the ordinary solvers (so the cuts
follow the precision: int8 makes cuts cheaper and compute faster) and ranks the results by
the objective; an option below the floor, or never measured, is reported and not planned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from layerfleet.controller.placement.cost import encoded_bytes, precision_flops_per_s
from layerfleet.controller.placement.model import Fleet, ModelCosts, Placement, PlacementError
from layerfleet.controller.placement.plan import plan

# Encoded bytes per float32 byte on a hop, before compression (agent/codecs.py).
NOMINAL_WIRE_RATIO = {"fp32": 1.0, "fp16": 0.5, "int8": 0.25}
# Flatbuffer weight bytes per float32 weight byte (partition/quantise.py).
WEIGHT_RATIO = {"fp32": 1.0, "fp16": 0.5, "dynamic": 0.25, "int8": 0.25}


@dataclass(frozen=True)
class PrecisionOption:
    precision: str                 # fp32 | fp16 | dynamic | int8
    activations: str = "fp32"      # the hops' WireFormat, as `describe()` writes it
    top1: float | None = None      # measured agreement with float32; None: not measured
    wire_ratio: float | None = None  # measured encoded/float32 bytes; None: nominal

    @property
    def is_reference(self) -> bool:
        return self.precision == "fp32" and self.activations == "fp32"

    def ratio(self) -> float:
        if self.wire_ratio is not None:
            return self.wire_ratio
        return NOMINAL_WIRE_RATIO[self.activations.partition("+")[0]]

    def meets(self, floor: float) -> bool:
        """float32 is the reference and always qualifies; any other must have been
        measured at or above the floor."""
        return self.is_reference or (self.top1 is not None and self.top1 >= floor)


Speedups = Mapping[str, Mapping[str, float]]   # device id -> precision -> x fp32 FLOP/s


def apply(costs: ModelCosts, fleet: Fleet, option: PrecisionOption, speedups: Speedups
          ) -> tuple[ModelCosts, Fleet]:
    """The cost model's inputs at this option: inner cuts at their encoded bytes, weights
    at the precision's size, each device at its speed for the precision (1x unmeasured)."""
    ratio = option.ratio()
    cut_bytes = [costs.cut_bytes[0]] + [int(encoded_bytes(b, ratio))
                                        for b in costs.cut_bytes[1:-1]] + [costs.cut_bytes[-1]]
    weights = WEIGHT_RATIO[option.precision]
    scaled = dataclasses.replace(costs, cut_bytes=cut_bytes,
                                 param_bytes=[int(b * weights) for b in costs.param_bytes])
    devices = [dataclasses.replace(d, flops_per_s=precision_flops_per_s(
        d.flops_per_s, speedups.get(d.id, {}).get(option.precision, 1.0)))
        for d in fleet.devices]
    return scaled, Fleet(devices=devices, links=fleet.links, source=fleet.source,
                         default_link=fleet.default_link)


@dataclass(frozen=True)
class Ranked:
    option: PrecisionOption
    placement: Placement


def plan_options(costs: ModelCosts, fleet: Fleet, options: Sequence[PrecisionOption], *,
                 floor: float, speedups: Speedups, objective: str = "latency",
                 sla_s: float | None = None) -> tuple[list[Ranked], list[PrecisionOption]]:
    """(the options that meet the floor with their best placement, best first; the options
    refused for accuracy). PlacementError when no option that qualifies can be placed."""
    refused = [o for o in options if not o.meets(floor)]
    ranked = []
    for option in options:
        if not option.meets(floor):
            continue
        scaled_costs, scaled_fleet = apply(costs, fleet, option, speedups)
        try:
            best = plan(scaled_costs, scaled_fleet, objective=objective, sla_s=sla_s)[0]
        except PlacementError:
            continue
        ranked.append(Ranked(option, best))
    if not ranked:
        raise PlacementError("no precision that meets the agreement floor "
                             f"{floor:.3f} can be placed")
    ranked.sort(key=lambda r: (r.placement.prediction.objective(objective, sla_s),
                               -(r.option.top1 if r.option.top1 is not None else 1.0)))
    return ranked, refused
