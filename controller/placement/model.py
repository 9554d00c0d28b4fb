"""The placement engine's typed inputs and outputs (pure data, no TensorFlow).

A model is its layer order with per-layer costs; a cut at position p lies between layer
p-1 and layer p and costs cut_bytes[p] to cross (p = 0: the input; p = n: the output).
A placement is a list of stages: contiguous layer ranges [start, stop) on devices, in
order, each device used at most once (a replica is another device running the same
stage).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class PlacementError(ValueError):
    """Nothing fits; the message says which range does not fit where, and by how much."""


@dataclass(frozen=True)
class ModelCosts:
    name: str
    layer_names: list[str]
    flops: list[int]
    param_bytes: list[int]
    cut_bytes: list[int]          # n + 1 entries
    activation_bytes: list[int]   # output bytes per layer

    def __post_init__(self) -> None:
        n = len(self.flops)
        if not (len(self.layer_names) == len(self.param_bytes) == len(self.activation_bytes)
                == n and len(self.cut_bytes) == n + 1):
            raise ValueError("ModelCosts: per-layer lists must have n entries, cut_bytes n+1")
        object.__setattr__(self, "_flops_prefix", np.concatenate([[0.0], np.cumsum(
            np.asarray(self.flops, dtype=np.float64))]))
        object.__setattr__(self, "_param_prefix", np.concatenate([[0.0], np.cumsum(
            np.asarray(self.param_bytes, dtype=np.float64))]))

    @property
    def n(self) -> int:
        return len(self.flops)

    @classmethod
    def from_profile(cls, profile: Any) -> ModelCosts:
        """From a partitioner ModelProfile (read duck-typed: no partitioner import)."""
        return cls(name=profile.name, layer_names=[l.name for l in profile.layers],
                   flops=[int(l.flops) for l in profile.layers],
                   param_bytes=[int(l.param_bytes) for l in profile.layers],
                   cut_bytes=[int(profile.cut_bytes(p)) for p in range(len(profile.layers) + 1)],
                   activation_bytes=[int(l.output_bytes) for l in profile.layers])

    def range_flops(self, a: int, b: int) -> float:
        return float(self._flops_prefix[b] - self._flops_prefix[a])  # type: ignore[attr-defined]

    def range_memory(self, a: int, b: int) -> int:
        """Bytes a device needs for layers [a, b): the weights in the flatbuffer, plus an
        arena estimate of the tensors crossing in and out and twice the largest layer
        output inside (its input and output alive at once)."""
        from layerfleet.controller.placement.cost import memory_bytes  # (cost imports us)

        params = self._param_prefix[b] - self._param_prefix[a]  # type: ignore[attr-defined]
        inner = max(self.activation_bytes[a:b], default=0)
        return int(memory_bytes(params, self.cut_bytes[a], self.cut_bytes[b], inner))


@dataclass(frozen=True)
class Device:
    id: str
    flops_per_s: float
    memory_bytes: int
    overhead_s: float = 0.0005    # per stage run: interpreter call, (de)serialising
    idle_w: float = 2.7
    busy_w: float = 6.4
    is_cloud: bool = False
    up: bool = True


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    bandwidth_Bps: float
    rtt_s: float
    joules_per_byte: float = 0.0

    def seconds(self, nbytes: float) -> float:
        """One-way: half a round trip plus serialisation at the link rate."""
        from layerfleet.controller.placement.cost import transfer_s  # (cost imports us)

        return float(transfer_s(nbytes, self.bandwidth_Bps, self.rtt_s))


@dataclass
class Fleet:
    devices: list[Device]
    links: list[Link] = field(default_factory=list)
    source: str = "client"
    default_link: Link | None = None

    def __post_init__(self) -> None:
        # What solvers derive from the fleet (device classes), kept while this object
        # lives: a Fleet is not changed once built (make a new one instead).
        self.derived: dict[Any, Any] = {}
        self._links = {}
        for link in self.links:
            self._links[(link.a, link.b)] = link
            self._links[(link.b, link.a)] = link
        self._devices = {d.id: d for d in self.devices}

    def link(self, a: str, b: str) -> Link:
        """Links are symmetric; an unmeasured pair uses default_link; a device to itself
        costs nothing."""
        if a == b:
            return Link(a, b, float("inf"), 0.0)
        found = self._links.get((a, b))
        if found is not None:
            return found
        if self.default_link is None:
            raise PlacementError(f"no link between {a} and {b} and no default link")
        return self.default_link

    def device(self, device_id: str) -> Device:
        return self._devices[device_id]


@dataclass(frozen=True)
class Stage:
    start: int
    stop: int
    device: str
    replicas: tuple[str, ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        return (self.device, *self.replicas)


@dataclass(frozen=True)
class StagePrediction:
    stage: int
    compute_s: float
    transfer_in_s: float
    memory_bytes: int
    energy_j: float
    link_bytes: int
    service_s: float              # time per request this stage occupies (pipeline view)


@dataclass(frozen=True)
class Prediction:
    latency_s: float
    throughput_rps: float
    energy_j: float
    stages: list[StagePrediction]
    links: list[tuple[str, str, int, float]]   # (from, to, bytes, seconds) per request

    def objective(self, objective: str, sla_s: float | None = None,
                  weights: tuple[float, float] = (1.0, 1.0)) -> float:
        """The number each objective minimises (throughput as seconds per request)."""
        if objective == "latency":
            return self.latency_s
        if objective == "throughput":
            return 1.0 / self.throughput_rps
        if objective == "energy":
            return self.energy_j if sla_s is None or self.latency_s <= sla_s + 1e-12 \
                else float("inf")
        if objective == "weighted":
            return weights[0] * self.latency_s + weights[1] * self.energy_j
        raise ValueError(f"unknown objective {objective!r}")


@dataclass(frozen=True)
class Placement:
    stages: list[Stage]
    prediction: Prediction
    strategy: str
    objective: str
    # No placement of the stated problem scores better than this on the objective (None:
    # not computed). Equal to the objective's value when the solver proved it optimal.
    lower_bound: float | None = None

    @property
    def cuts(self) -> list[int]:
        return [s.start for s in self.stages[1:]]

    @property
    def devices(self) -> list[str]:
        return [d for s in self.stages for d in s.devices]

    def key(self) -> tuple[tuple[int, int, str, tuple[str, ...]], ...]:
        return tuple((s.start, s.stop, s.device, s.replicas) for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Placement:
        pred = data["prediction"]
        return cls(
            stages=[Stage(s["start"], s["stop"], s["device"], tuple(s["replicas"]))
                    for s in data["stages"]],
            prediction=Prediction(
                latency_s=pred["latency_s"], throughput_rps=pred["throughput_rps"],
                energy_j=pred["energy_j"], stages=[StagePrediction(**s) for s in pred["stages"]],
                links=[tuple(l) for l in pred["links"]]),  # type: ignore[misc]
            strategy=data["strategy"], objective=data["objective"],
            lower_bound=data.get("lower_bound"))
