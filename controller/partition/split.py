"""Segments: a contiguous range of the layer order as a LiteRT flatbuffer, cached on disk.

A segment [start, stop) is a tf.function that takes the tensors crossing `start` and returns
the tensors crossing `stop`, replaying the model's own layer calls (Keras node arguments) in
topological order; tensors that only pass through are returned unchanged. Its signature's
input and output names are the graph's tensor names, so a ShardRunner needs nothing else.
The whole model is the segment [0, n): converted the same way, it is the reference that
splits are compared with.

Cache key: sha256 of (model digest, start, stop, conversion options, TensorFlow version),
plus the precision and, for int8, the representative data set's digest (quantise.py). A
repeated split converts nothing. A split converts every shard before it writes any, so a
precision that fails (an op with no int8 kernel, say) leaves the directory as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerfleet.controller.partition.errors import PartitionError
from layerfleet.controller.partition.graph import Edge, LayerGraph, build_graph
from layerfleet.controller.partition.load import model_digest
from layerfleet.controller.partition.manifest import Manifest, ShardInfo, TensorInfo
from layerfleet.controller.partition.profile import ModelProfile
from layerfleet.controller.partition.profiler import profile_graph
from layerfleet.controller.partition.quantise import (
    CalibrationSet,
    ShardPrecision,
    cache_options,
    calibration_set,
    check_precision,
    configure,
    float_ops,
)

CONVERSION = {"dtype": "float32", "optimizations": [], "batch": 1}


def default_cache_dir() -> Path:
    env = os.environ.get("LAYERFLEET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "layerfleet" / "shards"


@dataclass(slots=True)
class Stats:
    """Conversions actually run (not served from cache) in this process."""

    conversions: int = 0
    cache_hits: int = 0


stats = Stats()


class Analysis:
    """A model with its graph, digest and profile computed once."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graph: LayerGraph = build_graph(model)
        self.digest = model_digest(model)
        self.profile: ModelProfile = profile_graph(self.graph, model.name, self.digest)


def profile_model(model: Any) -> ModelProfile:
    return Analysis(model).profile


def balanced_cuts(profile: ModelProfile, n_shards: int) -> list[int]:
    """n_shards-1 cut positions that split the FLOPs as evenly as possible (greedy on the
    running total: cut where the prefix sum passes k/n of the whole)."""
    n = profile.n
    if not 1 <= n_shards <= n:
        raise PartitionError(f"cannot make {n_shards} shards from {n} layers")
    total = sum(layer.flops for layer in profile.layers) or n
    weights = [layer.flops if total != n else 1 for layer in profile.layers]
    cuts: list[int] = []
    running = 0
    for pos, w in enumerate(weights[:-1], start=1):
        running += w
        if len(cuts) < n_shards - 1 and running >= total * (len(cuts) + 1) / n_shards:
            cuts.append(pos)
    # Too few (a few huge layers): fill with the remaining positions, keeping order.
    free = [p for p in range(1, n) if p not in cuts]
    while len(cuts) < n_shards - 1:
        cuts.append(free.pop())
    return sorted(cuts)


def check_cuts(cuts: list[int], n: int) -> list[int]:
    cuts = sorted(cuts)
    for c in cuts:
        if not 0 < c < n:
            raise PartitionError(f"cut {c} is out of range: cuts must lie in 1..{n - 1} "
                                 f"for a model of {n} layers")
    if len(set(cuts)) != len(cuts):
        raise PartitionError(f"cuts {cuts} repeat a position")
    return cuts


def _segment_function(graph: LayerGraph, start: int, stop: int) -> Any:
    import tensorflow as tf
    from keras.src import tree

    ins, outs = graph.crossing(start), graph.crossing(stop)
    nodes = graph.nodes[start:stop]
    spec = {e.name: tf.TensorSpec(e.shape, e.dtype, name=e.name) for e in ins}

    @tf.function(input_signature=[spec], autograph=False)
    def segment(inputs: dict[str, Any]) -> dict[str, Any]:
        values = {e.key: inputs[e.name] for e in ins}
        for node in nodes:
            args, kwargs = node.arguments.fill_in(values)
            result = node.operation(*args, **kwargs)
            for tensor, value in zip(node.outputs, tree.flatten(result)):
                values[id(tensor)] = value
        return {e.name: tf.identity(values[e.key], name=e.name) for e in outs}

    return segment


class _FloatActivations:
    """The float activations at each cut for a representative data set, computed on demand
    by running the float segments in TensorFlow (what int8 calibration of a later segment
    needs as its inputs)."""

    def __init__(self, graph: LayerGraph, calibration: CalibrationSet) -> None:
        self.graph = graph
        self.at: dict[int, list[dict[str, np.ndarray]]] = {0: list(calibration.samples())}

    def inputs_at(self, bounds: list[int], index: int) -> list[dict[str, np.ndarray]]:
        known = max(i for i, b in enumerate(bounds[:index + 1]) if b in self.at)
        for i in range(known, index):
            fn = _segment_function(self.graph, bounds[i], bounds[i + 1])
            self.at[bounds[i + 1]] = [{k: v.numpy() for k, v in fn(sample).items()}
                                      for sample in self.at[bounds[i]]]
        return self.at[bounds[index]]


def _convert(graph: LayerGraph, start: int, stop: int, precision: ShardPrecision = "fp32",
             representative: list[dict[str, np.ndarray]] | None = None) -> bytes:
    import tensorflow as tf

    concrete = _segment_function(graph, start, stop).get_concrete_function()
    # The converter freezes the variables it finds through this object; Keras 3 variables
    # are not tracked by the model as tf.Variables, so hand them over explicitly (otherwise
    # they freeze as uninitialised memory and the shard computes NaN).
    holder = tf.Module()
    holder.variables_ = [w.value for w in graph.model.weights]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    configure(converter, precision, first=start == 0, last=stop == graph.n,
              representative=lambda: iter(representative or []))
    layer = graph.layer(start).name if stop - start == 1 else \
        f"{graph.layer(start).name}..{graph.layer(stop - 1).name}"
    try:
        data = converter.convert()
    except Exception as exc:  # the converter raises ConverterError and friends
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PartitionError(f"LiteRT conversion of layers {start}-{stop - 1} ({layer}) "
                             f"at {precision} failed: {first}") from None
    if precision == "int8":
        left = float_ops(data)
        if left:
            raise PartitionError(
                f"layers {start}-{stop - 1} ({layer}) do not quantise to int8: op "
                f"{', '.join(sorted(set(left)))} has no int8 kernel in LiteRT and would run "
                f"in float32; use --precision dynamic or fp16, or replace the op")
    return data


def _cache_key(digest: str, start: int, stop: int, extra: dict[str, Any] | None = None) -> str:
    import tensorflow as tf

    text = json.dumps({"model": digest, "start": start, "stop": stop,
                       "options": {**CONVERSION, **(extra or {})}, "tf": tf.__version__},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def segment_flatbuffer(analysis: Analysis, start: int, stop: int,
                       cache_dir: Path | None, precision: ShardPrecision = "fp32",
                       calibration: CalibrationSet | None = None,
                       representative: Any = None) -> bytes:
    """One segment's flatbuffer, from the cache or converted. For int8, `representative`
    is called (only on a cache miss) for the segment's float inputs per sample."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = _cache_key(analysis.digest, start, stop, cache_options(precision, calibration))
    path = cache / f"{key}.tflite"
    if path.exists():
        stats.cache_hits += 1
        return path.read_bytes()
    data = _convert(analysis.graph, start, stop, precision,
                    representative() if precision == "int8" else None)
    stats.conversions += 1
    _atomic_write(path, data)
    return data


def _prepare(analysis: Analysis, precision: str,
             calibration: Mapping[str, np.ndarray] | None
             ) -> tuple[ShardPrecision, CalibrationSet | None]:
    checked = check_precision(precision)
    if checked != "int8":
        return checked, None
    if calibration is None:
        raise PartitionError("precision int8 needs a representative data set "
                             "(--calibration-data x.npz: a few hundred real inputs)")
    return checked, calibration_set(calibration, _info(analysis.graph.inputs))


def _info(edges: list[Edge]) -> list[TensorInfo]:
    return [TensorInfo(e.name, e.dtype, list(e.shape)) for e in edges]


def split_model(model: Any, cuts: list[int], out_dir: Path | str, *,
                cache_dir: Path | None = None, analysis: Analysis | None = None,
                precision: str = "fp32",
                calibration: Mapping[str, np.ndarray] | None = None) -> Manifest:
    """Write one .tflite per shard and manifest.json into out_dir, at `precision`
    (quantise.py; int8 needs `calibration`, arrays of [samples, *input shape] per input).
    Every shard is converted before any file is written."""
    analysis = analysis or Analysis(model)
    graph = analysis.graph
    cuts = check_cuts(list(cuts), graph.n)
    checked, calib = _prepare(analysis, precision, calibration)
    activations = _FloatActivations(graph, calib) if calib is not None else None
    bounds = [0, *cuts, graph.n]
    converted = []
    for index, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        converted.append(segment_flatbuffer(
            analysis, start, stop, cache_dir, checked, calib,
            (lambda i=index: activations.inputs_at(bounds, i)) if activations else None))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for index, ((start, stop), data) in enumerate(zip(zip(bounds, bounds[1:]), converted)):
        name = f"shard-{index:02d}.tflite"
        _atomic_write(out / name, data)
        layers = analysis.profile.layers[start:stop]
        shards.append(ShardInfo(
            index=index, file=name, sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data), start=start, stop=stop,
            inputs=_info(graph.crossing(start)), outputs=_info(graph.crossing(stop)),
            flops=sum(l.flops for l in layers), param_bytes=sum(l.param_bytes for l in layers),
            precision=checked))
    manifest = Manifest(model_name=model.name, model_digest=analysis.digest,
                        inputs=_info(graph.inputs), outputs=_info(graph.outputs),
                        shards=shards, cuts=cuts, profile=analysis.profile,
                        conversion={**CONVERSION, **cache_options(checked, calib)},
                        precision=checked)
    manifest.save(out)
    return manifest


def convert_whole(model: Any, out_path: Path | str, *, cache_dir: Path | None = None,
                  analysis: Analysis | None = None, precision: str = "fp32",
                  calibration: Mapping[str, np.ndarray] | None = None) -> Path:
    """The unsplit model, converted exactly like a segment: the reference for equality."""
    analysis = analysis or Analysis(model)
    checked, calib = _prepare(analysis, precision, calibration)
    data = segment_flatbuffer(analysis, 0, analysis.graph.n, cache_dir, checked, calib,
                              (lambda: list(calib.samples())) if calib else None)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    return path
