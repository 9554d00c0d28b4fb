"""`layerfleet run-local`: run a split model's shards in order, in this process. TF-free.

Shards are chained (manifest.py), so each shard's outputs are the next one's inputs. Between
two shards the outputs go through the same encode and decode as on a hop between agents
(agent/codecs.py: `activations`, float32 by default; an int8 shard's int8 output crosses as
it is), so a run here computes what a deployment of the same shards computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from layerfleet.agent import codecs
from layerfleet.agent.runtime import ShardInputError, ShardRunner
from layerfleet.controller.partition.manifest import Manifest, TensorInfo


def bind_model_inputs(inputs: Mapping[str, np.ndarray],
                      expected: list[TensorInfo]) -> dict[str, np.ndarray]:
    """Key the caller's arrays by the manifest's input names (a lone array binds to a lone
    input), or raise ShardInputError naming expected and received."""
    if len(expected) == 1 and len(inputs) == 1:
        return {expected[0].name: next(iter(inputs.values()))}
    names = {t.name for t in expected}
    if set(inputs) != names:
        raise ShardInputError(f"expected inputs {[t.describe() for t in expected]}, "
                              f"received {sorted(inputs)}")
    return dict(inputs)


class LocalPipeline:
    """All shards of a split, loaded once, run back to back."""

    def __init__(self, directory: Path | str, *, num_threads: int | None = None,
                 activations: codecs.WireFormat = codecs.FP32) -> None:
        self.directory = Path(directory)
        self.activations = activations
        self.manifest = Manifest.load(self.directory)
        self.runners = [ShardRunner(self.manifest.shard_path(self.directory, s.index),
                                    num_threads=num_threads)
                        for s in self.manifest.shards]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = bind_model_inputs(inputs, self.manifest.inputs)
        for before, runner in zip([None, *self.runners], self.runners):
            if before is not None:
                tensors = codecs.hand_over(tensors, before.output_affines, self.activations,
                                           runner.wants)
            tensors = runner.run(tensors)
        return codecs.floats(tensors, self.runners[-1].output_affines)


def run_local(directory: Path | str, inputs: Mapping[str, np.ndarray], *,
              num_threads: int | None = None,
              activations: codecs.WireFormat = codecs.FP32) -> dict[str, np.ndarray]:
    return LocalPipeline(directory, num_threads=num_threads, activations=activations).run(inputs)
