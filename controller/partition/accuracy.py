"""Accuracy, measured, not assumed: how far a precision and a hop encoding move a split
model's outputs from float32's, on a held-out set the user gives. TF-free.

`measure` runs the float32 split and the candidate split (same cuts) back to back in this
process, handing over between shards exactly as agents do (codecs.hand_over), and reports
top-1 agreement (the share of samples whose arg-max output class is the same) and the
largest absolute difference of any output, plus the bytes each cut carried encoded (what the
planner charges a hop: compression makes them depend on the data).

`admissible` and `cheapest` are the rules `--precision auto` follows: a choice whose
measured agreement is below the floor is reported and never picked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from layerfleet.agent import codecs
from layerfleet.controller.partition.errors import PartitionError
from layerfleet.controller.partition.local import LocalPipeline
from layerfleet.controller.partition.quantise import calibration_set

MIN_EVAL_SAMPLES = 20


@dataclass(frozen=True)
class Choice:
    """A shard precision with a hop encoding."""

    precision: str                  # fp32 | fp16 | dynamic | int8
    activations: codecs.WireFormat = codecs.FP32

    def describe(self) -> str:
        return f"{self.precision} shards, {self.activations.describe()} hops"


@dataclass(frozen=True)
class Agreement:
    choice: Choice
    samples: int
    top1: float                     # 0..1, share of samples with the same arg-max
    max_abs_diff: float             # over every output value
    cut_bytes: list[float] = field(default_factory=list)   # mean encoded bytes per cut

    def meets(self, floor: float) -> bool:
        return self.top1 >= floor


def measure(reference_dir: Path | str, candidate_dir: Path | str,
            eval_data: Mapping[str, np.ndarray],
            activations: codecs.WireFormat = codecs.FP32, *,
            precision: str | None = None) -> Agreement:
    """Agreement of the candidate split (with `activations` on its hops) with the float32
    split over `eval_data` ([samples, *input shape] per model input)."""
    reference = LocalPipeline(reference_dir)
    candidate = LocalPipeline(candidate_dir, activations=activations)
    if reference.manifest.cuts != candidate.manifest.cuts:
        raise PartitionError(f"cannot compare splits at cuts {reference.manifest.cuts} and "
                             f"{candidate.manifest.cuts}")
    data = calibration_set(eval_data, reference.manifest.inputs, what="evaluation data",
                           minimum=MIN_EVAL_SAMPLES)
    same = 0
    worst = 0.0
    cut_bytes = np.zeros(len(candidate.runners) - 1)
    for sample in data.samples():
        want = reference.run(sample)
        got, sent = _run_counting(candidate, sample)
        cut_bytes += sent
        same += all(int(np.argmax(want[k])) == int(np.argmax(got[k])) for k in want)
        worst = max(worst, max(float(np.max(np.abs(want[k] - got[k]))) for k in want))
    return Agreement(Choice(precision or candidate.manifest.precision, activations),
                     data.count, same / data.count, worst,
                     list(cut_bytes / data.count))


def _run_counting(pipeline: LocalPipeline, sample: Mapping[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], list[int]]:
    """The pipeline's outputs and the encoded bytes that crossed each cut."""
    from layerfleet.controller.partition.local import bind_model_inputs

    tensors = bind_model_inputs(sample, pipeline.manifest.inputs)
    sent = []
    for before, runner in zip([None, *pipeline.runners], pipeline.runners):
        if before is not None:
            encoded = codecs.encode_many(tensors, pipeline.activations, before.output_affines)
            sent.append(sum(e.payload.nbytes for e in encoded.values()))
            tensors = codecs.hand_over(tensors, before.output_affines, pipeline.activations,
                                       runner.wants)
        tensors = runner.run(tensors)
    return codecs.floats(tensors, pipeline.runners[-1].output_affines), sent


def admissible(measured: Sequence[Agreement], floor: float) -> list[Agreement]:
    """The choices whose measured agreement meets the floor (float32 always does: it is
    the reference)."""
    return [a for a in measured if a.meets(floor) or
            (a.choice.precision == "fp32" and a.choice.activations == codecs.FP32)]


def cheapest(measured: Sequence[Agreement], floor: float,
             cost: Callable[[Agreement], float]) -> Agreement:
    """The admissible choice of least cost (ties: the more accurate). PartitionError when
    nothing was measured."""
    ok = admissible(measured, floor)
    if not ok:
        raise PartitionError(f"no precision meets the agreement floor {floor:.3f}; measured: "
                             + "; ".join(f"{a.choice.describe()} {a.top1:.3f}"
                                         for a in measured))
    return min(ok, key=lambda a: (cost(a), -a.top1))
