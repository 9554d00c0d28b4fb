"""CLI commands that need no controller: inspect, split, run-local.

inspect and split import TensorFlow (inside the command); run-local does not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from layerfleet.controller.cli_common import fails_cleanly, parse_shape
from layerfleet.controller.tables import human_bytes, human_flops, table

_input_shape = click.option("--input-shape", default="", metavar="H,W,C",
                            help="Fixed input shape without batch (LiteRT needs fixed shapes).")
_weights = click.option("--weights", type=click.Path(dir_okay=False), default=None,
                        help="Local weights file to load into the model.")


def _analysis(model: str, input_shape: str, weights: str | None) -> Any:
    from layerfleet.controller.partition.load import load_model
    from layerfleet.controller.partition.split import Analysis

    return Analysis(load_model(model, input_shape=parse_shape(input_shape), weights=weights))


@click.command()
@click.argument("model")
@_input_shape
@_weights
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@fails_cleanly
def inspect(model: str, input_shape: str, weights: str | None, as_json: bool) -> None:
    """Show MODEL's layers in topological order with FLOPs, parameters, output bytes and the
    bytes crossing each cut. MODEL is a .keras/.h5 file, a SavedModel directory or a
    keras.applications name."""
    analysis = _analysis(model, input_shape, weights)
    profile = analysis.profile
    if as_json:
        click.echo(json.dumps(profile.to_dict()))
        return
    rows = []
    for pos, layer in enumerate(profile.layers):
        cut = profile.cuts[pos + 1]
        rows.append([pos, layer.name, layer.class_name, human_flops(layer.flops),
                     human_bytes(layer.param_bytes), human_bytes(layer.output_bytes),
                     f"{human_bytes(cut.bytes)} ({len(cut.tensors)})"])
    click.echo(table(["pos", "layer", "class", "FLOPs", "params", "output",
                      "cut after: bytes (tensors)"], rows))
    click.echo(f"\n{profile.name}: {profile.n} layers, "
               f"{human_flops(sum(l.flops for l in profile.layers))}FLOPs, "
               f"{human_bytes(sum(l.param_bytes for l in profile.layers))} of parameters; "
               f"cut positions 1..{profile.n - 1} (input {human_bytes(profile.input_bytes)}, "
               f"output {human_bytes(profile.output_bytes)})")


@click.command()
@click.argument("model")
@click.option("--shards", type=int, default=0, help="Number of shards; cuts balance FLOPs.")
@click.option("--cuts", default="", metavar="I,J,K", help="Explicit cut positions.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for manifest.json and the .tflite shards.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Conversion cache (default $LAYERFLEET_CACHE or ~/.cache/layerfleet/shards).")
@click.option("--precision", default="fp32", show_default=True,
              type=click.Choice(["fp32", "fp16", "dynamic", "int8"]),
              help="Shard precision: float16 weights, dynamic-range int8 weights, or "
                   "full-integer int8 (needs --calibration-data).")
@click.option("--calibration-data", type=click.Path(dir_okay=False), default=None,
              help="int8: representative inputs, .npy [samples, ...] for one input or .npz "
                   "keyed by input name; at least 32 samples, a few hundred recommended.")
@_input_shape
@_weights
@fails_cleanly
def split(model: str, shards: int, cuts: str, out_dir: str, cache_dir: str | None,
          precision: str, calibration_data: str | None, input_shape: str,
          weights: str | None) -> None:
    """Cut MODEL into LiteRT shards: --shards N (balanced FLOPs) or --cuts I,J,K."""
    from layerfleet.controller.partition.split import balanced_cuts, split_model, stats

    if bool(shards) == bool(cuts):
        raise ValueError("give exactly one of --shards N or --cuts I,J,K")
    started = time.perf_counter()
    analysis = _analysis(model, input_shape, weights)
    if shards:
        positions = balanced_cuts(analysis.profile, shards)
    else:
        try:
            positions = [int(c) for c in cuts.split(",")]
        except ValueError:
            raise ValueError(f"--cuts {cuts!r}: expected positions like 30,80,120") from None
    calibration = _load_arrays(Path(calibration_data)) if calibration_data else None
    manifest = split_model(analysis.model, positions, Path(out_dir),
                           cache_dir=Path(cache_dir) if cache_dir else None, analysis=analysis,
                           precision=precision, calibration=calibration)
    click.echo(table(["shard", "layers", "precision", "FLOPs", "size", "inputs", "outputs"],
                     [[s.index, f"{s.start}-{s.stop - 1}", s.precision, human_flops(s.flops),
                       human_bytes(s.size_bytes), ", ".join(t.name for t in s.inputs),
                       ", ".join(t.name for t in s.outputs)] for s in manifest.shards]))
    click.echo(f"wrote {len(manifest.shards)} shards and manifest.json to {out_dir} in "
               f"{time.perf_counter() - started:.1f} s ({stats.conversions} converted, "
               f"{stats.cache_hits} from cache)")


@click.command("run-local")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help=".npy for a single-input model, .npz keyed by input name otherwise.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False), default=None,
              help="Write outputs: .npy (single output) or .npz.")
@click.option("--threads", type=int, default=None, help="LiteRT threads per shard.")
@click.option("--activations", default="fp32", show_default=True, metavar="ENC",
              help="Hand over between shards as a deployment's hops would: fp32, fp16, int8, "
                   "optionally +lz4 or +zstd.")
@fails_cleanly
def run_local(directory: str, input_path: str, output_path: str | None,
              threads: int | None, activations: str) -> None:
    """Run the shards written by `layerfleet split` in order, in this process."""
    from layerfleet.agent.codecs import WireFormat
    from layerfleet.controller.partition.local import LocalPipeline

    pipeline = LocalPipeline(directory, num_threads=threads,
                             activations=WireFormat.parse(activations))
    inputs = _load_arrays(Path(input_path))
    started = time.perf_counter()
    outputs = pipeline.run(inputs)
    elapsed = time.perf_counter() - started
    if output_path:
        _save_arrays(Path(output_path), outputs)
    for name, value in outputs.items():
        click.echo(f"{name}: {value.dtype.name}{list(value.shape)} "
                   f"min {value.min():.6g} max {value.max():.6g}")
    click.echo(f"{len(pipeline.runners)} shards in {elapsed * 1000:.2f} ms")


@click.command()
@click.argument("reference", type=click.Path(file_okay=False))
@click.argument("candidates", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--eval-data", required=True, type=click.Path(dir_okay=False),
              help="Held-out inputs: .npy [samples, ...] or .npz keyed by input name.")
@click.option("--activations", default="fp32,fp16,int8", show_default=True, metavar="LIST",
              help="Hop encodings to measure, comma-separated (fp32, fp16, int8, +lz4/+zstd).")
@click.option("--min-agreement", type=float, default=0.99, show_default=True,
              help="Top-1 agreement floor: choices below it are marked and never chosen.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fails_cleanly
def accuracy(reference: str, candidates: tuple[str, ...], eval_data: str,
             activations: str, min_agreement: float, as_json: bool) -> None:
    """Agreement of each CANDIDATE split with the float32 REFERENCE split (same cuts)."""
    import json

    from layerfleet.agent.codecs import WireFormat
    from layerfleet.controller.partition.accuracy import measure

    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"--min-agreement {min_agreement}: expected a share in 0..1")
    formats = [WireFormat.parse(a) for a in activations.split(",") if a.strip()]
    data = _load_arrays(Path(eval_data))
    rows = [measure(reference, c, data, f) for c in (reference, *candidates) for f in formats]
    if as_json:
        click.echo(json.dumps([{"precision": a.choice.precision,
                                "activations": a.choice.activations.describe(),
                                "top1": a.top1, "max_abs_diff": a.max_abs_diff,
                                "samples": a.samples, "cut_bytes": a.cut_bytes,
                                "meets_floor": a.meets(min_agreement)} for a in rows]))
        return
    click.echo(table(["shards", "hops", "top-1 agreement", "max abs diff", "bytes per hop",
                      f">= {min_agreement}"],
                     [[a.choice.precision, a.choice.activations.describe(), f"{a.top1:.4f}",
                       f"{a.max_abs_diff:.3g}", ", ".join(human_bytes(b) for b in a.cut_bytes),
                       "yes" if a.meets(min_agreement) else "NO (not chosen by auto)"]
                      for a in rows]))
    click.echo(f"{rows[0].samples} held-out samples")


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".npy":
        return {"": np.load(path, allow_pickle=False)}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    raise ValueError(f"{path}: expected a .npy or .npz file")


def _save_arrays(path: Path, outputs: dict[str, np.ndarray]) -> None:
    if path.suffix == ".npz":
        np.savez(path, **outputs)
    elif path.suffix == ".npy":
        if len(outputs) != 1:
            raise ValueError(f"the model has {len(outputs)} outputs: use an .npz for --output")
        np.save(path, next(iter(outputs.values())), allow_pickle=False)
    else:
        raise ValueError(f"{path}: expected a .npy or .npz file")
