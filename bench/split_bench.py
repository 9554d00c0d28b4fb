"""Split MobileNetV2 (224x224) into 4 shards: cold split time vs cached split time, shard
sizes, bytes crossing each cut.

    python bench/split_bench.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write  # noqa: E402


def main() -> None:
    from layerfleet.controller.partition import Analysis, balanced_cuts, load_model, split_model
    from layerfleet.controller.partition import split as split_module

    model = load_model("MobileNetV2", input_shape=(224, 224, 3))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        started = time.perf_counter()
        analysis = Analysis(model)
        cuts = balanced_cuts(analysis.profile, 4)
        cold_manifest = split_model(model, cuts, Path(tmp) / "cold", cache_dir=cache,
                                    analysis=analysis)
        cold = time.perf_counter() - started
        conversions = split_module.stats.conversions

        started = time.perf_counter()
        analysis = Analysis(model)  # a repeated split does the whole job again, minus conversion
        split_model(model, balanced_cuts(analysis.profile, 4), Path(tmp) / "warm",
                    cache_dir=cache, analysis=analysis)
        cached = time.perf_counter() - started
        assert split_module.stats.conversions == conversions, "cached split converted again"

    print(f"MobileNetV2 224x224, {analysis.graph.n} layers, cuts {cuts}")
    print(f"cold split   {cold:8.2f} s  ({conversions} conversions)")
    print(f"cached split {cached:8.2f} s  ratio cached/cold = {cached / cold:.3f} (goal < 0.05)")
    print("\nshard  layers    size       FLOPs")
    for s in cold_manifest.shards:
        print(f"{s.index:5d}  {s.start:3d}-{s.stop - 1:<4d} {s.size_bytes / 1e6:6.2f} MB  "
              f"{s.flops / 1e6:8.1f} M")
    print("\ncut  tensors  bytes")
    for c in cuts:
        cut = analysis.profile.cuts[c]
        print(f"{c:3d}  {len(cut.tensors):7d}  {cut.bytes:,}")
    write("split_bench", {
        "model": "MobileNetV2", "input": [224, 224, 3], "cuts": cuts, "cold_s": cold,
        "cached_s": cached, "cached_over_cold": cached / cold,
        "shards": [{"index": s.index, "layers": [s.start, s.stop], "bytes": s.size_bytes,
                    "flops": s.flops} for s in cold_manifest.shards],
        "cut_bytes": {str(c): analysis.profile.cuts[c].bytes for c in cuts}})


if __name__ == "__main__":
    main()
