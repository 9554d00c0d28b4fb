"""The fixed workload behind the Benchmark RPC: FLOP/s of this device's shard runtime.

data/calibration.tflite is four 3x3 convolutions built by deploy/make_calibration_shard.py;
its FLOPs are counted with the partitioner's formula, so measured FLOP/s and the profile's
per-layer FLOPs are in the same units. data/calibration-int8.tflite is the same network
quantised to int8 (float in, float out): its FLOP/s over float32's is the device's int8
speed-up, which the planner applies to int8 shards (placement/precision.py).

An agent with no shard loaded runs the benchmark in a child process (`measure`): every
controller that finds an agent calibrates it, and again every few minutes, and in the
agent's own process one run would leave LiteRT, XNNPACK and the interpreter's arena behind
(~16 MiB resident that neither Python nor glibc give back) in an agent that has nothing to
serve. An agent already serving shards has LiteRT loaded and runs it in place.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from importlib import resources

import numpy as np
from layerfleet.agent import runtime
from layerfleet.agent.errors import InvalidArgument, Unavailable
from layerfleet.agent.runtime import ShardRunner

CHILD_TIMEOUT_S = 120.0


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


async def measure(runs: int, num_threads: int | None, precision: str = "fp32"
                  ) -> tuple[float, int]:
    """run(), in this process when LiteRT is loaded here already, else in a child process;
    Unavailable when the child fails or takes over CHILD_TIMEOUT_S."""
    if precision not in SHARDS:
        raise InvalidArgument(f"no calibration shard for precision {precision!r}: choose "
                              f"{' or '.join(SHARDS)}")
    if runtime.loaded():
        return await asyncio.to_thread(run, runs, num_threads, precision)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "layerfleet.agent.calibration", str(runs), str(num_threads or 0),
        precision, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(child.communicate(), CHILD_TIMEOUT_S)
    except TimeoutError:
        await _reap(child)
        raise Unavailable(f"the benchmark did not finish within {CHILD_TIMEOUT_S:.0f} s") \
            from None
    except asyncio.CancelledError:   # the caller gave up: no orphan keeps running
        await _reap(child)
        raise
    if child.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise Unavailable(f"the benchmark failed (exit {child.returncode}): {last}")
    result = json.loads(out)
    return float(result["seconds"]), int(result["flops"])


async def _reap(child: asyncio.subprocess.Process) -> None:
    child.kill()
    await child.wait()


if __name__ == "__main__":   # the child process of measure()
    seconds, flops = run(int(sys.argv[1]), int(sys.argv[2]) or None, sys.argv[3])
    print(json.dumps({"seconds": seconds, "flops": flops}))
