"""What the controller measured of the requests that passed through it, per deployment.

The router records every request it routes: its latency as the controller saw it, each
hop's queue and compute time, and each link's time derived from the hop timings (a hop's
`forward_s` is the round trip to the rest of the chain, so the link into stage i takes
`forward_s[i-1]` minus everything stage i and later reported). Bytes per link are counted per
request that crossed it: the inputs' own size into stage 0, the cut's activation size (the
plan's `bytes_in`, exact for fixed-shape float32 tensors) into the later stages. Requests sent
to an entry agent directly, not through the controller, are not seen here.

The dashboard reads these windows beside the plan's predictions; Prometheus gets the same
observations as histograms and counters (metrics.py).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

WINDOW = 512          # recent requests kept per deployment for means and quantiles
RATE_WINDOW_S = 10.0  # requests per second over this many seconds


class HopLike(Protocol):
    device: str
    stage: int
    queue_s: float
    compute_s: float
    forward_s: float


@dataclass(slots=True)
class Window:
    """The last WINDOW values of one quantity."""

    values: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def add(self, value: float) -> None:
        self.values.append(value)

    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    def quantile(self, q: float) -> float | None:
        if not self.values:
            return None
        ordered = sorted(self.values)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@dataclass(slots=True)
class StageSeen:
    reached: int = 0          # requests that ran this stage
    exits: int = 0            # requests that left the pipeline here (an early exit)
    bytes_in: int = 0         # bytes that crossed the link into this stage, all requests
    queue_s: Window = field(default_factory=Window)
    compute_s: Window = field(default_factory=Window)
    link_in_s: Window = field(default_factory=Window)
    devices: Counter[str] = field(default_factory=Counter)  # which replica ran it


@dataclass(slots=True)
class DeploymentSeen:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)   # by status code name
    latency_s: Window = field(default_factory=Window)
    stages: dict[int, StageSeen] = field(default_factory=dict)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=4096))  # monotonic

    def rate_rps(self, now: float) -> float:
        since = now - RATE_WINDOW_S
        return sum(1 for t in self.recent if t >= since) / RATE_WINDOW_S


@dataclass(frozen=True, slots=True)
class LinkCrossing:
    """One request over one link: the metrics module's view of a hop between devices."""

    stage: int                # the stage the link leads into
    src: str                  # "client" (the controller) or the device that sent it
    dst: str
    seconds: float
    nbytes: int


class Sink(Protocol):
    """Where observations also go (Prometheus, metrics.py)."""

    def request(self, deployment: str, seconds: float, hops: Sequence[HopLike],
                links: Sequence[LinkCrossing]) -> None: ...

    def failure(self, deployment: str, code: str) -> None: ...


def link_crossings(total_s: float, hops: Sequence[HopLike], bytes_in: Sequence[int],
                   source: str = "client") -> list[LinkCrossing]:
    """The links a request crossed and how long each took, from its hop timings."""
    crossings = []
    ordered = sorted(hops, key=lambda h: h.stage)
    for i, hop in enumerate(ordered):
        downstream = hop.queue_s + hop.compute_s + hop.forward_s
        upstream = total_s if i == 0 else ordered[i - 1].forward_s
        src = source if i == 0 else ordered[i - 1].device
        nbytes = bytes_in[hop.stage] if hop.stage < len(bytes_in) else 0
        crossings.append(LinkCrossing(hop.stage, src, hop.device,
                                      max(upstream - downstream, 0.0), nbytes))
    return crossings


class Observed:
    def __init__(self, sink: Sink | None = None) -> None:
        self.sink = sink
        self.deployments: dict[str, DeploymentSeen] = {}

    def of(self, deployment: str) -> DeploymentSeen | None:
        return self.deployments.get(deployment)

    def request(self, deployment: str, total_s: float, hops: Sequence[HopLike],
                exited_at_stage: int, bytes_in: Sequence[int]) -> None:
        seen = self.deployments.setdefault(deployment, DeploymentSeen())
        seen.requests += 1
        seen.latency_s.add(total_s)
        seen.recent.append(time.monotonic())
        links = link_crossings(total_s, hops, bytes_in)
        for hop, link in zip(sorted(hops, key=lambda h: h.stage), links):
            stage = seen.stages.setdefault(hop.stage, StageSeen())
            stage.reached += 1
            stage.devices[hop.device] += 1
            stage.queue_s.add(hop.queue_s)
            stage.compute_s.add(hop.compute_s)
            stage.link_in_s.add(link.seconds)
            stage.bytes_in += link.nbytes
        if exited_at_stage >= 0:
            seen.stages.setdefault(exited_at_stage, StageSeen()).exits += 1
        if self.sink is not None:
            self.sink.request(deployment, total_s, hops, links)

    def failure(self, deployment: str, code: str) -> None:
        seen = self.deployments.setdefault(deployment, DeploymentSeen())
        seen.requests += 1
        seen.errors[code] += 1
        seen.recent.append(time.monotonic())
        if self.sink is not None:
            self.sink.failure(deployment, code)
