"""Fill a ModelProfile from a LayerGraph: FLOPs, parameter bytes, output bytes, cut bytes.

FLOPs per layer call, batch 1, a multiply-add counted as 2:
- Conv (1D/2D/3D): 2 * output elements * kernel volume * input channels / groups
- DepthwiseConv: 2 * output elements * kernel volume
- SeparableConv: the depthwise part + 2 * output elements * input channels * multiplier
- Dense / EinsumDense: 2 * output elements * input features
- pooling: output elements * pool volume (global pooling: input elements)
- BatchNormalization, LayerNormalization: 2 * output elements (scale and shift)
- layers that only move data (Reshape, Flatten, Concatenate, padding, cropping, Dropout at
  inference, Permute): 0
- everything else (activations, Add, Multiply, Rescaling, ...): 1 per output element
Parameter bytes are counted at a layer's first call only (shared layers hold one copy).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from layerfleet.agent import tensors
from layerfleet.controller.partition.errors import PartitionError
from layerfleet.controller.partition.graph import LayerGraph
from layerfleet.controller.partition.profile import CutCost, LayerCost, ModelProfile, TensorSpecInfo

_DATA_MOVEMENT = {"Reshape", "Flatten", "Concatenate", "ZeroPadding1D", "ZeroPadding2D",
                  "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "Dropout",
                  "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                  "ActivityRegularization", "Permute", "RepeatVector", "Identity", "InputLayer"}


def _elements(shape: tuple[Any, ...]) -> int:
    """Elements per sample (exact integers, checked: never an int64 wrap-around)."""
    dims = [int(d) if d is not None else 1 for d in shape[1:]]
    try:
        return tensors.check_shape(dims, 1)
    except tensors.TensorError as exc:
        raise PartitionError(str(exc)) from None


def layer_flops(layer: Any, in_shapes: list[tuple[Any, ...]],
                out_shapes: list[tuple[Any, ...]]) -> int:
    kind = type(layer).__name__
    out_elems = sum(_elements(s) for s in out_shapes)
    in_elems = sum(_elements(s) for s in in_shapes)
    if kind in _DATA_MOVEMENT:
        return 0
    kernel = tuple(getattr(layer, "kernel_size", ()) or ())
    kernel_volume = math.prod(int(k) for k in kernel)
    channels_in = int(in_shapes[0][-1]) if in_shapes and in_shapes[0][-1] else 1
    if kind.startswith("DepthwiseConv"):
        return 2 * out_elems * kernel_volume
    if kind.startswith("SeparableConv"):
        multiplier = int(getattr(layer, "depth_multiplier", 1))
        depthwise_out = out_elems // max(int(out_shapes[0][-1]), 1) * channels_in * multiplier
        return 2 * depthwise_out * kernel_volume + 2 * out_elems * channels_in * multiplier
    if kind.startswith("Conv"):  # Conv1D/2D/3D and transposes
        groups = int(getattr(layer, "groups", 1) or 1)
        return 2 * out_elems * kernel_volume * channels_in // groups
    if kind in ("Dense", "EinsumDense"):
        return 2 * out_elems * channels_in
    if "GlobalAveragePooling" in kind or "GlobalMaxPooling" in kind:
        return in_elems
    if "Pooling" in kind:
        pool = tuple(getattr(layer, "pool_size", ()) or ())
        return out_elems * math.prod(int(p) for p in pool)
    if kind in ("BatchNormalization", "LayerNormalization", "GroupNormalization"):
        return 2 * out_elems
    return out_elems


def profile_graph(graph: LayerGraph, name: str, digest: str) -> ModelProfile:
    seen_layers: set[int] = set()
    layers = []
    for pos, node in enumerate(graph.nodes):
        layer = node.operation
        params = 0
        if id(layer) not in seen_layers:
            seen_layers.add(id(layer))
            params = sum(math.prod(int(d) for d in w.shape) * np.dtype(w.dtype).itemsize
                         for w in getattr(layer, "weights", []))
        in_shapes = [tuple(t.shape) for t in node.input_tensors]
        out_shapes = [tuple(t.shape) for t in node.outputs]
        layers.append(LayerCost(
            name=layer.name, class_name=type(layer).__name__,
            flops=int(layer_flops(layer, in_shapes, out_shapes)), param_bytes=int(params),
            output_bytes=sum(graph.edges[id(t)].nbytes for t in node.outputs)))
    cuts = []
    for p in range(graph.n + 1):
        crossing = graph.crossing(p)
        cuts.append(CutCost(position=p, bytes=sum(e.nbytes for e in crossing),
                            tensors=tuple(TensorSpecInfo(e.name, e.dtype, e.shape, e.nbytes)
                                          for e in crossing)))
    return ModelProfile(name=name, digest=digest, layers=layers, cuts=cuts)
