"""The partitioner: Keras model -> layer DAG -> topological order -> cuts -> LiteRT shards.

    graph     the DAG, positions and crossing tensors      (Keras)
    profiler  FLOPs / bytes per layer and per cut          (Keras)
    split     segments, conversion, cache, split_model     (TensorFlow)
    load      load_model, model_digest                     (Keras)
    profile, manifest, local, errors                       (TF-free: the agent side may read)

Names are imported lazily, so `from layerfleet.controller.partition import Manifest` does
not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PartitionError": "errors", "ModelFileError": "errors",
    "ModelProfile": "profile", "LayerCost": "profile", "CutCost": "profile",
    "Manifest": "manifest", "ShardInfo": "manifest", "TensorInfo": "manifest",
    "run_local": "local", "LocalPipeline": "local",
    "load_model": "load", "model_digest": "load",
    "build_graph": "graph", "LayerGraph": "graph",
    "Analysis": "split", "profile_model": "split", "balanced_cuts": "split",
    "split_model": "split", "convert_whole": "split",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
