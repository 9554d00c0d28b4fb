"""The fixed workload behind the Benchmark RPC: FLOP/s of this device's shard runtime.

data/calibration.tflite is four 3x3 convolutions built by deploy/make_calibration_shard.py;
its FLOPs are counted with the partitioner's formula, so measured FLOP/s and the profile's
per-layer FLOPs are in the same units.
"""

from __future__ import annotations

import json
import time
from importlib import resources

import numpy as np
from layerfleet.agent.runtime import ShardRunner


def run(runs: int, num_threads: int | None) -> tuple[float, int]:
    """(median seconds per run, FLOPs per run) after one warm-up run."""
    data = resources.files("layerfleet.agent").joinpath("data")
    spec = json.loads(data.joinpath("calibration.json").read_text())
    runner = ShardRunner(data.joinpath("calibration.tflite").read_bytes(),
                         num_threads=num_threads)
    x = {spec["input"]: np.random.default_rng(0).random(spec["shape"], dtype=np.float32)}
    runner.run(x)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runner.run(x)
        times.append(time.perf_counter() - started)
    return float(np.median(times)), int(spec["flops"])
