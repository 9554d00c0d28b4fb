"""Build agent/data/calibration.tflite (and calibration-int8.tflite, the same convolutions
quantised to int8): the fixed workload an agent times to report FLOP/s per precision.

    python deploy/make_calibration_shard.py

Four 3x3 convolutions (32 -> 32 channels) on a 56x56 map: the kind of layer that dominates
CNN shards. Converted by the partitioner like any shard; its FLOPs (by the partitioner's
formula) go into calibration.json. Checked in, so the agent needs no TensorFlow.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "agent" / "data"


def main() -> None:
    import keras

    from layerfleet.controller.partition import Analysis, split_model

    keras.utils.set_random_seed(0)
    inp = keras.Input((56, 56, 32), name="x")
    x = inp
    for i in range(4):
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name=f"conv{i}")(x)
    model = keras.Model(inp, x, name="calibration")
    analysis = Analysis(model)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = split_model(model, [], tmp, cache_dir=Path(tmp) / "cache", analysis=analysis)
        data = (Path(tmp) / manifest.shards[0].file).read_bytes()
        rng = np.random.default_rng(0)
        int8 = split_model(model, [], Path(tmp) / "int8", cache_dir=Path(tmp) / "cache",
                           analysis=analysis, precision="int8",
                           calibration={"x": rng.random((32, 56, 56, 32), dtype=np.float32)})
        data8 = (Path(tmp) / "int8" / int8.shards[0].file).read_bytes()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "calibration.tflite").write_bytes(data)
    (OUT / "calibration-int8.tflite").write_bytes(data8)
    (OUT / "calibration.json").write_text(json.dumps({
        "flops": manifest.shards[0].flops, "input": manifest.inputs[0].name,
        "shape": manifest.inputs[0].shape}, indent=1) + "\n")
    print(f"wrote {OUT / 'calibration.tflite'} ({len(data)} bytes, "
          f"{manifest.shards[0].flops / 1e6:.1f} MFLOPs)")


if __name__ == "__main__":
    main()
