"""Cost profile of a model: per layer FLOPs, parameter bytes, output bytes; bytes per cut.

TF-free dataclasses (the placement engine and the registry read them); profiler.py fills
them from a Keras model. FLOPs count a multiply-add as 2 (see profiler.py for formulas).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TensorSpecInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    bytes: int


@dataclass(frozen=True, slots=True)
class LayerCost:
    name: str
    class_name: str
    flops: int
    param_bytes: int
    output_bytes: int


@dataclass(frozen=True, slots=True)
class CutCost:
    """The tensors crossing cut `position` (between layer position-1 and layer position)."""

    position: int
    tensors: tuple[TensorSpecInfo, ...]
    bytes: int


@dataclass(frozen=True, slots=True)
class ModelProfile:
    name: str
    digest: str
    layers: list[LayerCost]
    cuts: list[CutCost] = field(default_factory=list)  # cuts[p] for p in 0..n (0: inputs)

    @property
    def n(self) -> int:
        return len(self.layers)

    @property
    def input_bytes(self) -> int:
        return self.cuts[0].bytes

    @property
    def output_bytes(self) -> int:
        return self.cuts[-1].bytes

    def cut_bytes(self, position: int) -> int:
        return self.cuts[position].bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelProfile:
        return cls(
            name=data["name"], digest=data["digest"],
            layers=[LayerCost(**layer) for layer in data["layers"]],
            cuts=[CutCost(position=c["position"], bytes=c["bytes"],
                          tensors=tuple(TensorSpecInfo(t["name"], t["dtype"], tuple(t["shape"]),
                                                       t["bytes"]) for t in c["tensors"]))
                  for c in data["cuts"]])
