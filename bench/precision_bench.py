"""Precision: int8 / fp16 / dynamic shards against float32, and activations on the wire,
measured side by side in one run (issue 16's goals).

    python bench/precision_bench.py            # ~10 min on 2 cores (conversions cached after)
    python bench/precision_bench.py --quick    # MobileNetV2 only, fewer runs

1. Zoo compute (MobileNetV2, ResNet50, EfficientNetB0; 224x224, weights=None): the whole
   model converted at each precision, runs interleaved (fp32, fp16, dynamic, int8, fp32...),
   median seconds per run with one LiteRT thread (XNNPACK); top-1 agreement with float32 on
   crops of scikit-learn's sample images (int8 calibrated on other crops of them).
2. Digits CNN (the demo's, trained 30 epochs) in 3 shards: top-1 agreement with float32 on
   the 450 held-out digits for each precision and hop encoding (int8 calibrated on 300
   training digits), max abs and relative output difference.
3. MobileNetV2 in 3 shards: bytes per hop for each encoding on the sample-image crops.
4. End to end on a 50 Mbit/s link (computed from the measured compute and bytes, no
   emulator on this branch): latency of the 3-stage MobileNetV2 pipeline, float32 shards
   and hops against int8 shards with int8 hops.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import write  # noqa: E402

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
ENCODINGS = ("fp32", "fp16", "int8", "int8+lz4", "int8+zstd", "fp32+lz4")
LINK_BPS = 50e6 / 8
RTT_S = 0.002


def crops(count: int, size: int, seed: int) -> np.ndarray:
    """Random crops of sklearn's two sample images, resized to size x size, in [-1, 1]
    (read with TensorFlow's JPEG decoder: sklearn's loader needs Pillow)."""
    import sklearn.datasets
    import tensorflow as tf

    folder = Path(sklearn.datasets.__file__).parent / "images"
    images = [tf.io.decode_jpeg(p.read_bytes()).numpy() for p in sorted(folder.glob("*.jpg"))]
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        img = images[i % len(images)]
        side = int(rng.integers(min(img.shape[:2]) // 2, min(img.shape[:2])))
        y = int(rng.integers(0, img.shape[0] - side + 1))
        x = int(rng.integers(0, img.shape[1] - side + 1))
        idx = (np.arange(size) * side / size).astype(int)
        crop = img[y:y + side, x:x + side][idx][:, idx]
        out[i] = crop.astype(np.float32) / 127.5 - 1.0
    return out


def timed(runners: dict[str, object], x: dict[str, np.ndarray], rounds: int
          ) -> dict[str, float]:
    """Median seconds per run of each runner, interleaved round by round."""
    for r in runners.values():
        r.run(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            started = time.perf_counter()
            r.run(x)
            times[k].append(time.perf_counter() - started)
    return {k: float(np.median(v)) for k, v in times.items()}


def zoo(names: list[str], cache: Path, rounds: int, calib_n: int, eval_n: int) -> list[dict]:
    from layerfleet.agent.runtime import ShardRunner
    from layerfleet.controller.partition import Analysis, convert_whole, load_model

    rows = []
    for name in names:
        model = load_model(name, input_shape=(224, 224, 3))
        analysis = Analysis(model)
        (inp,) = [t.name for t in analysis.graph.inputs]
        calib = {inp: crops(calib_n, 224, seed=1)}
        evals = crops(eval_n, 224, seed=2)
        runners = {}
        for p in PRECISIONS:
            started = time.perf_counter()
            path = convert_whole(model, Path(tempfile.mkdtemp()) / f"{p}.tflite",
                                 cache_dir=cache, analysis=analysis, precision=p,
                                 calibration=calib if p == "int8" else None)
            print(f"  {name} {p}: converted in {time.perf_counter() - started:.1f} s "
                  f"({path.stat().st_size / 1e6:.1f} MB)", flush=True)
            runners[p] = ShardRunner(path, num_threads=1)
        secs = timed(runners, {inp: evals[:1]}, rounds)
        ref = [runners["fp32"].run({inp: e[None]}) for e in evals]
        row = {"model": name, "flops": sum(layer.flops for layer in analysis.profile.layers),
               "seconds": secs}
        for p in PRECISIONS[1:]:
            got = [runners[p].run({inp: e[None]}) for e in evals]
            row[f"top1_{p}"] = float(np.mean([
                np.argmax(next(iter(a.values()))) == np.argmax(next(iter(b.values())))
                for a, b in zip(ref, got)]))
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{p} {secs[p] * 1000:.1f} ms" for p in PRECISIONS)
              + f"; int8 speed-up {secs['fp32'] / secs['int8']:.2f}x", flush=True)
    return rows


def digits(cache: Path, tmp: Path) -> dict:
    from layerfleet.agent.codecs import WireFormat
    from layerfleet.controller.demo import train_digits_cnn
    from layerfleet.controller.partition import Analysis, load_model, split_model
    from layerfleet.controller.partition.accuracy import measure
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x_test, _, keras_accuracy = train_digits_cnn(tmp / "digits.keras")
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    x_train, _, _, _ = train_test_split(x, d.target, test_size=0.25, random_state=0,
                                        stratify=d.target)
    model = load_model(str(tmp / "digits.keras"))
    analysis = Analysis(model)
    cuts = [2, 4]
    dirs = {}
    for p in PRECISIONS:
        dirs[p] = tmp / f"digits-{p}"
        split_model(model, cuts, dirs[p], cache_dir=cache, analysis=analysis, precision=p,
                    calibration={"digit": x_train[:300]} if p == "int8" else None)
    rows = []
    ref_out = None
    for p in PRECISIONS:
        for enc in ("fp32", "fp16", "int8", "int8+lz4"):
            a = measure(dirs["fp32"], dirs[p], {"digit": x_test}, WireFormat.parse(enc))
            rows.append({"precision": p, "activations": enc, "top1": a.top1,
                         "max_abs_diff": a.max_abs_diff, "cut_bytes": a.cut_bytes})
            print(f"digits {p:7s} shards, {enc:9s} hops: top-1 agreement {a.top1:.4f}, "
                  f"max abs diff {a.max_abs_diff:.2e}, bytes/hop "
                  f"{[round(b) for b in a.cut_bytes]}", flush=True)
    # fp16 hops alone: relative error of the outputs (float32 shards)
    from layerfleet.controller.partition.local import LocalPipeline

    ref = LocalPipeline(dirs["fp32"])
    half = LocalPipeline(dirs["fp32"], activations=WireFormat.parse("fp16"))
    rel = 0.0
    for e in x_test:
        want, got = ref.run({"digit": e[None]}), half.run({"digit": e[None]})
        for k in want:
            rel = max(rel, float(np.max(np.abs(want[k] - got[k])) / np.max(np.abs(want[k]))))
    ref_out = rel
    print(f"digits fp16 hops: max relative output error {rel:.2e} (goal <= 1e-3)")
    return {"keras_accuracy": keras_accuracy, "cuts": cuts, "rows": rows,
            "fp16_hops_max_relative_error": ref_out, "eval_samples": len(x_test)}


def mobilenet_hops(cache: Path, tmp: Path, rounds: int, calib_n: int, eval_n: int) -> dict:
    from layerfleet.agent import codecs
    from layerfleet.agent.runtime import ShardRunner
    from layerfleet.controller.partition import Analysis, balanced_cuts, load_model, split_model

    model = load_model("MobileNetV2", input_shape=(224, 224, 3))
    analysis = Analysis(model)
    cuts = balanced_cuts(analysis.profile, 3)
    (inp,) = [t.name for t in analysis.graph.inputs]
    calib = {inp: crops(calib_n, 224, seed=1)}
    evals = crops(eval_n, 224, seed=2)
    splits = {}
    for p in ("fp32", "int8"):
        d = tmp / f"mnv2-{p}"
        split_model(model, cuts, d, cache_dir=cache, analysis=analysis, precision=p,
                    calibration=calib if p == "int8" else None)
        splits[p] = [ShardRunner(d / f"shard-{i:02d}.tflite", num_threads=1)
                     for i in range(3)]
    # compute per shard, interleaved; bytes per hop per encoding on real activations
    compute = {p: [0.0, 0.0, 0.0] for p in splits}
    hop_bytes: dict[str, list[float]] = {}
    encode_s: dict[str, float] = {}
    for p, runners in splits.items():
        x = {inp: evals[:1]}
        for i, r in enumerate(runners):
            compute[p][i] = timed({"r": r}, x, rounds)["r"]
            out = r.run(x)
            if i < 2:
                for enc in ENCODINGS:
                    fmt = codecs.WireFormat.parse(enc)
                    key = f"{p}/{enc}"
                    started = time.perf_counter()
                    e = codecs.encode_many(out, fmt, r.output_affines)
                    encode_s[key] = encode_s.get(key, 0.0) + time.perf_counter() - started
                    hop_bytes.setdefault(key, []).append(
                        float(sum(v.payload.nbytes for v in e.values())))
                x = codecs.hand_over(out, r.output_affines, codecs.FP32, runners[i + 1].wants)
    for key, b in hop_bytes.items():
        print(f"MobileNetV2 hops {key:15s}: {[round(v) for v in b]} bytes, "
              f"x{hop_bytes['fp32/fp32'][0] / b[0]:.2f} / x{hop_bytes['fp32/fp32'][1] / b[1]:.2f}"
              f" smaller than float32")

    def latency(p: str, enc: str) -> float:
        hops = hop_bytes[f"{p}/{enc}"]
        in_bytes = 224 * 224 * 3 * 4
        return (sum(compute[p]) + (in_bytes + sum(hops) + 4000) / LINK_BPS + 3 * RTT_S / 2
                + encode_s[f"{p}/{enc}"])
    e2e = {"fp32": latency("fp32", "fp32"), "int8": latency("int8", "int8"),
           "int8+lz4": latency("int8", "int8+lz4")}
    print(f"MobileNetV2 3 stages on 50 Mbit/s (computed): fp32 {e2e['fp32'] * 1000:.1f} ms, "
          f"int8 shards + int8 hops {e2e['int8'] * 1000:.1f} ms "
          f"(ratio {e2e['int8'] / e2e['fp32']:.3f})")
    return {"cuts": cuts, "compute_s": compute, "hop_bytes": hop_bytes, "latency_s": e2e}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 only, fewer runs")
    parser.add_argument("--cache", default=None, help="conversion cache (default: the user's)")
    args = parser.parse_args()
    from layerfleet.controller.partition.split import default_cache_dir

    cache = Path(args.cache) if args.cache else default_cache_dir()
    rounds = 5 if args.quick else 15
    names = ["MobileNetV2"] if args.quick else ["MobileNetV2", "ResNet50", "EfficientNetB0"]
    with tempfile.TemporaryDirectory() as tmp:
        zoo_rows = zoo(names, cache, rounds, calib_n=32, eval_n=16)
        digit = digits(cache, Path(tmp))
        hops = mobilenet_hops(cache, Path(tmp), rounds, calib_n=32, eval_n=4)
    print("\nmodel           fp32 ms  fp16 ms  dynamic ms  int8 ms  int8 speed-up  "
          "top-1 int8 (sample crops)")
    for r in zoo_rows:
        s = r["seconds"]
        print(f"{r['model']:15s} {s['fp32'] * 1000:7.1f}  {s['fp16'] * 1000:7.1f}  "
              f"{s['dynamic'] * 1000:10.1f}  {s['int8'] * 1000:7.1f}  "
              f"{s['fp32'] / s['int8']:13.2f}  {r['top1_int8']:.3f}")
    write("precision_bench", {"zoo": zoo_rows, "digits": digit, "mobilenet_hops": hops,
                              "rounds": rounds, "threads": 1, "link_Bps": LINK_BPS})


if __name__ == "__main__":
    main()
