"""Shard precision: what each choice asks of the converter, the representative data set that
full-integer int8 needs, and the check that an int8 shard really runs in int8.

    fp32      float32 weights and compute (the reference; cache keys unchanged)
    fp16      float16 weights, float32 compute (half the flatbuffer)
    dynamic   int8 weights, activations quantised on the fly (no data set needed)
    int8      int8 weights and activations, calibrated on a representative data set: the
              first shard takes the model's float input (it quantises inside), the last
              returns floats, and every tensor crossing a cut between them is int8 (it
              crosses as it is when the hop's activations are int8; agent/codecs.py)

TF-free except where a converter is configured (`configure`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from layerfleet.controller.partition.errors import PartitionError
from layerfleet.controller.partition.manifest import TensorInfo

ShardPrecision = Literal["fp32", "fp16", "dynamic", "int8"]
SHARD_PRECISIONS: tuple[ShardPrecision, ...] = get_args(ShardPrecision)
# Full-integer calibration takes each activation's min and max over the data set: too few
# samples and a rare large value clips. The converter's guide asks for ~100-500.
MIN_CALIBRATION_SAMPLES = 32
RECOMMENDED_CALIBRATION_SAMPLES = 200
# Ops that only move int8 values between the float boundary and the int8 body.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


def check_precision(name: str) -> ShardPrecision:
    if name not in SHARD_PRECISIONS:
        raise PartitionError(f"unknown precision {name!r}: choose one of "
                             f"{', '.join(SHARD_PRECISIONS)}")
    return name  # type: ignore[return-value]


@dataclass(frozen=True)
class CalibrationSet:
    """A representative data set: per model input, [samples, *input shape] float32."""

    arrays: Mapping[str, np.ndarray]

    @property
    def count(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[name])
            h.update(name.encode() + str(a.shape).encode() + a.tobytes())
        return h.hexdigest()

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """One batch-1 input per sample, as the shards take them."""
        for i in range(self.count):
            yield {name: a[i:i + 1] for name, a in self.arrays.items()}


def calibration_set(arrays: Mapping[str, np.ndarray], inputs: list[TensorInfo], *,
                    what: str = "calibration data",
                    minimum: int = MIN_CALIBRATION_SAMPLES) -> CalibrationSet:
    """The user's arrays checked against the model's inputs (shape [1, ...] each): a lone
    array binds to a lone input; each must be float with shape [N, ...input shape], the
    same N for all, N >= minimum, every value finite. PartitionError names what is wrong."""
    if not arrays:
        raise PartitionError(f"{what} is empty")
    if len(inputs) == 1 and len(arrays) == 1:
        arrays = {inputs[0].name: next(iter(arrays.values()))}
    names = {t.name for t in inputs}
    if set(arrays) != names:
        raise PartitionError(f"{what} has arrays {sorted(arrays)}; the model's inputs are "
                             f"{[t.describe() for t in inputs]} (an .npz with one array per "
                             f"input, named after it)")
    out: dict[str, np.ndarray] = {}
    counts = set()
    for t in inputs:
        a = np.asarray(arrays[t.name])
        want = tuple(t.shape[1:])
        if a.dtype.kind != "f":
            raise PartitionError(f"{what} {t.name}: dtype {a.dtype.name}, the model takes "
                                 f"{t.dtype}; give the inputs exactly as the model takes them "
                                 f"(scaled floats)")
        if a.ndim != len(want) + 1 or tuple(a.shape[1:]) != want:
            raise PartitionError(f"{what} {t.name}: shape {list(a.shape)}, expected "
                                 f"[samples, {', '.join(map(str, want))}]")
        if not np.isfinite(a).all():
            raise PartitionError(f"{what} {t.name}: holds NaN or infinite values")
        counts.add(a.shape[0])
        out[t.name] = a.astype(np.float32, copy=False)
    if len(counts) != 1:
        raise PartitionError(f"{what}: inputs have different sample counts {sorted(counts)}")
    (count,) = counts
    if count < minimum:
        raise PartitionError(f"{what} has {count} samples: at least {minimum} are needed "
                             f"({RECOMMENDED_CALIBRATION_SAMPLES} or more recommended), real "
                             f"inputs of the kind the model will see")
    return CalibrationSet(out)


def cache_options(precision: ShardPrecision, calibration: CalibrationSet | None
                  ) -> dict[str, Any]:
    """What a precision adds to a segment's cache key (nothing for fp32, so caches made
    before precisions existed stay valid)."""
    if precision == "fp32":
        return {}
    options: dict[str, Any] = {"precision": precision}
    if precision == "int8":
        assert calibration is not None
        options["calibration"] = calibration.digest
    return options


def configure(converter: Any, precision: ShardPrecision, *, first: bool, last: bool,
              representative: Any = None) -> None:
    """Set a TFLiteConverter up for `precision` (its default is fp32: nothing to do)."""
    import tensorflow as tf

    if precision == "fp32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32 if first else tf.int8
        converter.inference_output_type = tf.float32 if last else tf.int8


def float_ops(flatbuffer: bytes) -> list[str]:
    """Ops of a full-integer shard that still compute in float (the converter leaves an op
    with no int8 kernel in float32 instead of failing): their names, in order."""
    from layerfleet.agent.runtime import backend

    _, interpreter_cls = backend()
    interpreter = interpreter_cls(model_content=flatbuffer)
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():   # the only per-op view LiteRT offers
        if op["op_name"] in _BOUNDARY_OPS:
            continue
        if any(i >= 0 and dtypes[i].kind == "f" for i in list(op["inputs"]) + list(op["outputs"])):
            found.append(str(op["op_name"]))
    return found
