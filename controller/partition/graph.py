"""A Keras functional model as a DAG: layer calls in topological order, tensors as edges.

Positions: the order holds the model's n layer calls (input layers excluded; a layer
called twice appears twice). A cut at position p lies between order[p-1] and order[p];
p runs from 0 (before everything: the model inputs) to n (after everything: the model
outputs). The tensors crossing cut p are those produced before p (or fed in as model
inputs) and still needed at or after p: consumed by a later layer or a model output.
Every p is a valid cut; several tensors may cross it (skips, concatenations, outputs
produced early).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from layerfleet.agent import tensors
from layerfleet.controller.partition.errors import PartitionError


@dataclass(slots=True)
class Edge:
    """One tensor of the graph. `producer` is the position of the layer call that makes it
    (-1 for a model input); `last_use` the last position that reads it (n for an output)."""

    key: int                    # id() of the KerasTensor
    name: str                   # unique, [a-z0-9_]+: the name shards and the wire use
    shape: tuple[int, ...]      # with batch 1
    dtype: str
    producer: int
    last_use: int = -1
    tensor: Any = None

    @property
    def nbytes(self) -> int:
        itemsize = np.dtype(self.dtype).itemsize
        try:   # exact integers: an absurd shape is refused, never wrapped around
            return tensors.check_shape(self.shape, itemsize, name=self.name) * itemsize
        except tensors.TensorError as exc:
            raise PartitionError(str(exc)) from None


@dataclass(slots=True)
class LayerGraph:
    model: Any
    nodes: list[Any]                        # keras Node per position
    edges: dict[int, Edge] = field(default_factory=dict)
    inputs: list[Edge] = field(default_factory=list)
    outputs: list[Edge] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.nodes)

    def layer(self, position: int) -> Any:
        return self.nodes[position].operation

    def crossing(self, position: int) -> list[Edge]:
        """Tensors crossing cut `position`, in a stable order (by producer, then name)."""
        if not 0 <= position <= self.n:
            raise PartitionError(f"cut {position} is out of range: cuts run from 0 to {self.n}")
        # The ends keep the model's own order of inputs and outputs.
        if position == 0:
            return list(self.inputs)
        if position == self.n:
            return list({e.key: e for e in self.outputs}.values())
        found = [e for e in self.edges.values() if e.producer < position <= e.last_use]
        return sorted(found, key=lambda e: (e.producer, e.name))


def _sanitize(name: str) -> str:
    clean = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return clean if clean and not clean[0].isdigit() else f"t_{clean}"


def functional_of(model: Any) -> Any:
    """The functional graph behind a model, or a PartitionError saying why there is none."""
    import keras

    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise PartitionError(f"Sequential model {model.name!r} has no input shape yet: "
                                 f"give it keras.Input(shape) or set input_shape")
        return graph
    if not hasattr(model, "_nodes_by_depth") or not hasattr(model, "_run_through_graph"):
        raise PartitionError(
            f"model {getattr(model, 'name', model)!r} is a subclassed keras.Model with no "
            f"functional graph, so it cannot be cut into layers: rebuild it with the "
            f"functional API or keras.Sequential")
    return model


def build_graph(model: Any) -> LayerGraph:
    fn = functional_of(model)
    order = [node for depth in sorted(fn._nodes_by_depth, reverse=True)
             for node in fn._nodes_by_depth[depth] if not node.is_input]
    graph = LayerGraph(model=model, nodes=order)
    used: set[str] = set()

    def add(tensor: Any, base: str, producer: int) -> None:
        shape = tuple(tensor.shape)
        if any(d is None for d in shape[1:]):
            raise PartitionError(
                f"tensor {base} has dynamic shape {list(shape)}: LiteRT needs fixed shapes; "
                f"give the model a fixed input shape (input_shape)")
        name = _sanitize(base)
        while name in used:
            name += "_"
        used.add(name)
        graph.edges[id(tensor)] = Edge(id(tensor), name, (1, *shape[1:]), str(tensor.dtype),
                                       producer, tensor=tensor)

    for tensor in fn.inputs:
        add(tensor, f"input_{tensor.name}" if not _layer_name(tensor) else _layer_name(tensor),
            -1)
    for pos, node in enumerate(order):
        for tensor in node.input_tensors:
            edge = graph.edges.get(id(tensor))
            if edge is None:
                raise PartitionError(f"layer {node.operation.name} reads a tensor from outside "
                                     f"the model's graph; cannot split it")
            edge.last_use = max(edge.last_use, pos)
        outs = node.outputs
        for i, tensor in enumerate(outs):
            suffix = f"_{i}" if len(outs) > 1 else ""
            add(tensor, f"{node.operation.name}{suffix}", pos)
    graph.inputs = [graph.edges[id(t)] for t in fn.inputs]
    graph.outputs = [graph.edges[id(t)] for t in fn.outputs]
    for edge in graph.outputs:
        edge.last_use = graph.n
    return graph


def _layer_name(tensor: Any) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else ""
