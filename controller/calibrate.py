"""Measure a device when it joins: the numbers the cost model runs on.

- speed: the agent runs a synthetic shard a few times and reports FLOP/s of its LiteRT
  runtime (Benchmark RPC); placement divides each layer's FLOPs by it.
- controller -> agent link: round-trip time is the median of small calls; bandwidth is one
  echoed payload's bytes over its time minus the round trip.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

PING_COUNT = 7
PAYLOAD_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Calibration:
    flops_per_s: float
    bandwidth_Bps: float
    rtt_s: float

    def describe(self) -> str:
        return (f"{self.flops_per_s / 1e9:.2f} GFLOP/s, link "
                f"{self.bandwidth_Bps * 8 / 1e6:.0f} Mbit/s, rtt {self.rtt_s * 1000:.2f} ms")


async def measure(client: Any, *, runs: int = 5) -> Calibration:
    bench = await client.benchmark(runs=runs)
    rtts = []
    for _ in range(PING_COUNT):
        started = time.perf_counter()
        await client.describe()
        rtts.append(time.perf_counter() - started)
    rtt = statistics.median(rtts)
    seconds = await client.echo(PAYLOAD_BYTES)
    # The echo moves the payload both ways; take one direction's rate.
    bandwidth = 2 * PAYLOAD_BYTES / max(seconds - rtt, 1e-6)
    return Calibration(flops_per_s=bench.flops_per_s, bandwidth_Bps=bandwidth, rtt_s=rtt)
