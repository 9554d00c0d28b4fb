"""The split manifest (manifest.json beside the .tflite shards). TF-free.

Shards are in pipeline order and chained: shard k's outputs are exactly shard k+1's inputs
(tensors that skip a shard pass through it), shard 0 takes the model inputs and the last
shard gives the model outputs. So whoever runs shard k only ever forwards all its outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layerfleet.controller.partition.errors import PartitionError
from layerfleet.controller.partition.profile import ModelProfile

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dtype: str          # numpy name: "float32"
    shape: list[int]

    def describe(self) -> str:
        return f"{self.name} {self.dtype}{self.shape}"


@dataclass(frozen=True, slots=True)
class ShardInfo:
    index: int
    file: str
    sha256: str
    size_bytes: int
    start: int          # first layer position in the topological order
    stop: int           # one past the last
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    flops: int
    param_bytes: int
    precision: str = "fp32"   # fp32 | fp16 | dynamic | int8 (partition/quantise.py)


@dataclass(slots=True)
class Manifest:
    model_name: str
    model_digest: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    shards: list[ShardInfo]
    cuts: list[int]
    profile: ModelProfile
    conversion: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: Path | str) -> Path:
        """Write manifest.json atomically (a reader never sees half a manifest)."""
        directory = Path(directory)
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=directory)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        path = directory / MANIFEST
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: Path | str, *, verify: bool = True) -> Manifest:
        directory = Path(directory)
        path = directory / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PartitionError(f"{directory}: no {MANIFEST} here; is this a directory "
                                 f"written by `layerfleet split`?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PartitionError(f"{path}: not valid JSON ({exc})") from None
        try:
            if data.get("format_version") != FORMAT_VERSION:
                raise PartitionError(f"{path}: manifest format {data.get('format_version')}, "
                                     f"this layerfleet reads {FORMAT_VERSION}")
            manifest = cls(
                model_name=data["model_name"], model_digest=data["model_digest"],
                inputs=[TensorInfo(**t) for t in data["inputs"]],
                outputs=[TensorInfo(**t) for t in data["outputs"]],
                shards=[ShardInfo(**{**s, "inputs": [TensorInfo(**t) for t in s["inputs"]],
                                     "outputs": [TensorInfo(**t) for t in s["outputs"]]})
                        for s in data["shards"]],
                cuts=list(data["cuts"]), profile=ModelProfile.from_dict(data["profile"]),
                conversion=data.get("conversion", {}),
                precision=data.get("precision", "fp32"))
        except (KeyError, TypeError) as exc:
            raise PartitionError(f"{path}: manifest is missing or has a malformed field "
                                 f"({exc})") from None
        if verify:
            for shard in manifest.shards:
                shard_file = directory / shard.file
                try:
                    digest = hashlib.sha256(shard_file.read_bytes()).hexdigest()
                except FileNotFoundError:
                    raise PartitionError(f"{shard_file}: shard {shard.index} is missing") from None
                if digest != shard.sha256:
                    raise PartitionError(f"{shard_file}: sha256 {digest[:12]} does not match "
                                         f"the manifest's {shard.sha256[:12]}; re-run split")
        return manifest

    def shard_path(self, directory: Path | str, index: int) -> Path:
        return Path(directory) / self.shards[index].file
