"""Measure a device when it joins, and again now and then: the numbers the cost model runs on.

- speed: the agent runs a synthetic shard a few times and reports FLOP/s of its LiteRT
  runtime (Benchmark RPC); placement divides each layer's FLOPs by it.
- controller -> agent link: round-trip time is the median of small calls; bandwidth is one
  echoed payload's bytes over its time minus the round trip.
- drift: every few minutes each calibrated device that is up and idle runs the benchmark
  again (3 runs of the 231 MFLOP shard: tens of milliseconds on a Pi 4). A device busy
  serving is skipped (its own telemetry says whether it ran a shard in the last half
  second): a benchmark there would slow real requests and measure the contention, not the
  device. `should_replan` gets, per device, the median of its last three measurements: one
  measurement disturbed by a neighbour moves nothing, a device that stays slower does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import grpc
from layerfleet.agent.client import AgentError
from layerfleet.controller.placement.plan import Observation

log = logging.getLogger(__name__)
PING_COUNT = 7
PAYLOAD_BYTES = 4 << 20
RECHECK_RUNS = 3          # benchmark runs of a periodic re-check (join calibration runs 5)
RECHECK_CONCURRENCY = 8   # devices re-checked at once (each waits BUSY_WINDOW_S first)
BUSY_WINDOW_S = 0.5       # a shard run within this long makes a device busy
ESTIMATE_OF = 3           # measurements per device behind its speed estimate (the median)


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
    bandwidth, rtt = await link(client)
    return Calibration(flops_per_s=bench.flops_per_s, bandwidth_Bps=bandwidth, rtt_s=rtt)


async def link(client: Any, nbytes: int = PAYLOAD_BYTES) -> tuple[float, float]:
    """(bandwidth B/s, round trip s) from the controller to the agent behind `client`."""
    from layerfleet.agent.client import probe_link

    return await probe_link(client, nbytes, pings=PING_COUNT)


async def measure_links(registry: Any, agents: Any
                        ) -> list[tuple[str, str, float, float, str]]:
    """Time every link between two devices that are up (asked of the first agent of each
    pair), store the numbers for the planner; returns (a, b, B/s, rtt s, error)."""
    up = [d for d in registry.devices() if d.state == "up"]
    found = []
    for i, a in enumerate(up):
        for b in up[i + 1:]:
            try:
                bandwidth, rtt = await agents.get(a.address).measure_link(b.address)
            except Exception as exc:  # AgentError, timeouts: report the pair, go on
                found.append((a.id, b.id, 0.0, 0.0, str(exc)))
                continue
            registry.set_link(a.id, b.id, bandwidth, rtt)
            found.append((a.id, b.id, bandwidth, rtt, ""))
    return found


class Drift:
    """What periodic re-benchmarks measured, per device, for should_replan."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[Observation]] = {}
        self.measured = 0   # measurements recorded so far (the re-planner's change mark)

    def record(self, device: str, flops_per_s: float, now: float) -> None:
        self._seen.setdefault(device, deque(maxlen=ESTIMATE_OF)).append(
            Observation(time=now, device=device, flops_per_s=flops_per_s))
        self.measured += 1

    def estimate(self, device: str) -> Observation | None:
        """The device's speed now: the median of its last ESTIMATE_OF measurements, at the
        time of the latest (None until it has that many)."""
        seen = self._seen.get(device)
        if seen is None or len(seen) < ESTIMATE_OF:
            return None
        speeds = sorted(o.flops_per_s for o in seen)
        return Observation(time=seen[-1].time, device=device,
                           flops_per_s=speeds[len(speeds) // 2])

    def observations(self) -> list[Observation]:
        """One estimate per device that has one: should_replan's drift input."""
        return [e for e in map(self.estimate, self._seen) if e is not None]


async def busy(client: Any, window_s: float = BUSY_WINDOW_S) -> bool:
    """Whether the agent ran a shard in the last `window_s`: its telemetry's per-shard run
    counts, read twice that far apart, moved."""
    counts = []
    async with contextlib.aclosing(client.telemetry(interval_s=window_s)) as samples:
        async for sample in samples:
            counts.append(sum(s.count for s in sample.shards))
            if len(counts) == 2:
                break
    return len(counts) < 2 or counts[1] != counts[0]


async def recheck(registry: Any, agents: Any, drift: Drift, *, runs: int = RECHECK_RUNS,
                  window_s: float = BUSY_WINDOW_S,
                  concurrency: int = RECHECK_CONCURRENCY) -> dict[str, str]:
    """Re-benchmark every calibrated device that is up and idle into `drift`, a few at a
    time. Returns what happened to each device ("measured", "busy" or the error)."""
    slots = asyncio.Semaphore(concurrency)

    async def one(device: Any) -> str:
        async with slots:
            client = agents.get(device.address)
            try:
                if await busy(client, window_s):
                    return "busy"
                reply = await client.benchmark(runs=runs)
            except (AgentError, TimeoutError, grpc.RpcError) as exc:
                return str(exc)
            drift.record(device.id, reply.flops_per_s, time.monotonic())
            return "measured"

    devices = [d for d in registry.devices() if d.state == "up" and d.flops_per_s > 0]
    outcome = dict(zip([d.id for d in devices],
                       await asyncio.gather(*(one(d) for d in devices)), strict=True))
    log.debug("re-benchmark: %s", outcome)
    return outcome
