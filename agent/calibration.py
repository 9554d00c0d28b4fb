"""The fixed workload behind the Benchmark RPC: FLOP/s of this device's shard runtime.

data/calibration.tflite is four 3x3 convolutions built by deploy/make_calibration_shard.py;
its FLOPs are counted with the partitioner's formula, so measured FLOP/s and the profile's
per-layer FLOPs are in the same units. data/calibration-int8.tflite is the same network
quantised to int8 (float in, float out): its FLOP/s over float32's is the device's int8
speed-up, which the planner applies to int8 shards (placement/precision.py).
"""

from __future__ import annotations

import json
import time
from importlib import resources

import numpy as np
from layerfleet.agent.errors import InvalidArgument
from layerfleet.agent.runtime import ShardRunner


SHARDS = {"fp32": "calibration.tflite", "int8": "calibration-int8.tflite"}


def run(runs: int, num_threads: int | None, precision: str = "fp32") -> tuple[float, int]:
    """(median seconds per run, FLOPs per run) after one warm-up run."""
    if precision not in SHARDS:
        raise InvalidArgument(f"no calibration shard for precision {precision!r}: choose "
                              f"{' or '.join(SHARDS)}")
    data = resources.files("layerfleet.agent").joinpath("data")
    spec = json.loads(data.joinpath("calibration.json").read_text())
    runner = ShardRunner(data.joinpath(SHARDS[precision]).read_bytes(),
                         num_threads=num_threads)
    x = {spec["input"]: np.random.default_rng(0).random(spec["shape"], dtype=np.float32)}
    runner.run(x)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runner.run(x)
        times.append(time.perf_counter() - started)
    return float(np.median(times)), int(spec["flops"])
