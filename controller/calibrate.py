"""Measure a device when it joins: the numbers the cost model runs on.

- speed: the agent runs a synthetic shard a few times and reports FLOP/s of its LiteRT
  runtime (Benchmark RPC); placement divides each layer's FLOPs by it.
- controller -> agent link: round-trip time is the median of small calls; bandwidth is one
  echoed payload's bytes over its time minus the round trip.
"""

from __future__ import annotations

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
