"""Placement over a zoo of models and simulated fleets: layerfleet's plan vs the baselines a
user would otherwise pick, plan time, and the Greedy Nominator's gain from replicas.

    python bench/placement_bench.py [--models N]

Profiles (FLOPs, bytes per layer and per cut, from the partitioner) are cached in
bench/results/profiles/ so reruns build no model. Predictions come from the cost model
(controller/placement/cost.py); fleets are simulated with published device speeds and
power figures (see FLEETS).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, write  # noqa: E402

from layerfleet.controller.partition.profile import ModelProfile  # noqa: E402
from layerfleet.controller.placement.model import Device, Fleet, Link, ModelCosts  # noqa: E402
from layerfleet.controller.placement.plan import compare_baselines, plan  # noqa: E402

ZOO = ["MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "ResNet50",
       "ResNet101", "ResNet50V2", "DenseNet121", "DenseNet169", "EfficientNetB0",
       "EfficientNetB3", "EfficientNetV2B0", "InceptionV3", "Xception", "VGG16", "NASNetMobile",
       "ConvNeXtTiny"]
GB = 1e9


def _pi4(i: int) -> Device:   # 4 x Cortex-A72, LiteRT float32; Pi Dramble power figures
    return Device(f"pi4-{i}", 6e9, int(1.5 * GB), 0.0005, 2.7, 6.4)


def _pi3(i: int) -> Device:
    return Device(f"pi3-{i}", 2.5e9, int(0.6 * GB), 0.0008, 1.9, 5.1)


def _pi5(i: int) -> Device:
    return Device(f"pi5-{i}", 15e9, int(3 * GB), 0.0004, 3.0, 9.0)


CLOUD = Device("cloud", 300e9, 16 * 10**9, 0.0002, 60.0, 200.0, is_cloud=True)
LAN = Link("*", "*", 940e6 / 8, 0.0005, 1e-8)


def _fleet(devices: list[Device], uplink_Bps: float, uplink_rtt: float) -> Fleet:
    links = [Link(d.id, "cloud", uplink_Bps, uplink_rtt, 5e-8) for d in devices
             if d.id != "cloud"] + [Link("client", "cloud", uplink_Bps, uplink_rtt, 5e-8)]
    return Fleet(devices, links, source="client", default_link=LAN)


FLEETS = {
    "3xPi4+cloud@20Mbit": _fleet([_pi4(i) for i in range(3)] + [CLOUD], 20e6 / 8, 0.040),
    "hetero": _fleet([_pi3(0), _pi4(0), _pi4(1), _pi5(0),
                      Device("jetson", 60e9, 6 * 10**9, 0.0004, 5.0, 15.0), CLOUD],
                     100e6 / 8, 0.030),
    "20 devices": _fleet([[_pi3, _pi4, _pi5][i % 3](i) for i in range(19)] + [CLOUD],
                         50e6 / 8, 0.035),
}


def custom_models() -> dict:
    import keras

    inp = keras.Input((8, 8, 1), name="digit")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    digits = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x), name="digits_cnn")
    image = keras.Input((64, 64, 3), name="image")
    meta = keras.Input((16,), name="meta")
    y = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(image)
    z = keras.layers.Conv2D(32, 3, padding="same")(y)
    y = keras.layers.Add()([y, z])
    y = keras.layers.GlobalAveragePooling2D()(y)
    j = keras.layers.Concatenate()([y, keras.layers.Dense(32)(meta)])
    multi = keras.Model([image, meta], [keras.layers.Dense(5)(j), keras.layers.Dense(2)(meta)],
                        name="two_headed")
    return {"digits_cnn": digits, "two_headed": multi}


def load_profiles(limit: int) -> dict[str, ModelProfile]:
    cache = RESULTS / "profiles"
    cache.mkdir(parents=True, exist_ok=True)
    names = ZOO[:limit] + ["digits_cnn", "two_headed"]
    out = {}
    customs = None
    for name in names:
        path = cache / f"{name}.json"
        if not path.exists():
            from layerfleet.controller.partition import load_model, profile_model

            if name in ("digits_cnn", "two_headed"):
                customs = customs or custom_models()
                model = customs[name]
            else:
                model = load_model(name, input_shape=(224, 224, 3))
            path.write_text(json.dumps(profile_model(model).to_dict()))
        out[name] = ModelProfile.from_dict(json.loads(path.read_text()))
    return out


def timed_plan(costs: ModelCosts, fleet: Fleet, **kw) -> tuple[list, float]:
    times, found = [], None
    for _ in range(3):
        started = time.perf_counter()
        found = plan(costs, fleet, **kw)
        times.append(time.perf_counter() - started)
    return found, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=len(ZOO))
    args = parser.parse_args()
    profiles = load_profiles(args.models)
    rows = []
    print(f"{'model':<18}{'layers':>7} {'fleet':<20}{'objective':<11}{'layerfleet':>12}"
          f"{'best baseline':>15} {'(which)':<16}{'ratio':>7}{'plan ms':>9}")
    for name, profile in profiles.items():
        costs = ModelCosts.from_profile(profile)
        for fleet_name, fleet in FLEETS.items():
            for objective in ("latency", "throughput"):
                found, seconds = timed_plan(costs, fleet, objective=objective)
                score = found[0].prediction.objective(objective)
                baselines = {k: v for k, v in compare_baselines(costs, fleet, objective).items()
                             if v is not None}
                best_name, best = min(baselines.items(),
                                      key=lambda kv: kv[1].prediction.objective(objective))
                base_score = best.prediction.objective(objective)
                shown = (lambda s: f"{s * 1000:9.2f} ms") if objective == "latency" else \
                    (lambda s: f"{1 / s:9.1f} /s")
                ratio = score / base_score
                print(f"{name:<18}{costs.n:>7} {fleet_name:<20}{objective:<11}{shown(score):>12}"
                      f"{shown(base_score):>15} {best_name:<16}{ratio:>7.3f}{seconds * 1000:>9.1f}")
                rows.append({"model": name, "layers": costs.n, "fleet": fleet_name,
                             "objective": objective, "layerfleet": score,
                             "best_baseline": base_score,
                             "best_baseline_strategy": best_name, "ratio": ratio,
                             "plan_s": seconds, "stages": len(found[0].stages),
                             "strategy": found[0].strategy,
                             "baselines": {k: v.prediction.objective(objective)
                                           for k, v in baselines.items()}})
    gains = []
    print("\nGreedy Nominator on the heterogeneous fleet (throughput, predicted):")
    for name, profile in profiles.items():
        costs = ModelCosts.from_profile(profile)
        without = plan(costs, FLEETS["hetero"], objective="throughput")[0]
        with_gnh = plan(costs, FLEETS["hetero"], objective="throughput", redundancy="gnh")[0]
        gain = with_gnh.prediction.throughput_rps / without.prediction.throughput_rps - 1
        gains.append({"model": name, "without_rps": without.prediction.throughput_rps,
                      "with_gnh_rps": with_gnh.prediction.throughput_rps, "gain": gain,
                      "replicas": sum(len(s.replicas) for s in with_gnh.stages)})
        print(f"  {name:<18} {without.prediction.throughput_rps:8.1f}/s -> "
              f"{with_gnh.prediction.throughput_rps:8.1f}/s  (+{gain:.0%}, "
              f"{gains[-1]['replicas']} replicas)")
    worst = max(r["ratio"] for r in rows)
    big = [r for r in rows if r["fleet"] == "20 devices" and r["layers"] >= 140]
    print(f"\nworst ratio layerfleet/best baseline: {worst:.3f} (goal <= 1.0)")
    if big:
        print(f"plan time, >= 140-layer models over 20 devices: max "
              f"{max(r['plan_s'] for r in big) * 1000:.1f} ms (goal <= 50 ms)")
    print(f"GNH gain: median +{statistics.median(g['gain'] for g in gains):.0%}, "
          f"max +{max(g['gain'] for g in gains):.0%}")
    write("placement_bench", {"rows": rows, "gnh": gains, "worst_ratio": worst})


if __name__ == "__main__":
    main()
