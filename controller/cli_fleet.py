"""CLI commands that talk to a controller: devices, models, plan, deploy, deployments, infer,
undeploy, events (and demo, which starts its own controller; see demo.py).

Every command prints a readable table, or JSON with --json, and turns a controller error
into one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from google.protobuf import json_format
from layerfleet.controller import states, wire
from layerfleet.controller.cli_common import fails_cleanly, parse_shape
from layerfleet.controller.tables import human_bytes, human_flops, human_rate, ms, table

controller_option = click.option(
    "--controller", "address", envvar="LAYERFLEET_CONTROLLER", default="localhost:50050",
    show_default=True, help="Controller address HOST:PORT (env LAYERFLEET_CONTROLLER).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _client(address: str) -> Any:
    from layerfleet.controller.client import ControllerClient

    return ControllerClient(address)


def _print_json(messages: Any) -> None:
    if isinstance(messages, list):
        data = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]
    else:
        data = json_format.MessageToDict(messages, preserving_proto_field_name=True)
    click.echo(json.dumps(data, indent=2))


# -- devices ----------------------------------------------------------------------------------

@click.command()
@click.option("--measure-links", is_flag=True,
              help="First time every agent-to-agent link (stored for planning).")
@controller_option
@json_option
@fails_cleanly
def devices(measure_links: bool, address: str, as_json: bool) -> None:
    """List the devices the controller knows, with calibration and last telemetry."""
    with _client(address) as lf:
        links = lf.measure_links() if measure_links else []
        found = lf.devices()
    if links and not as_json:
        click.echo(table(["device", "device", "link", "rtt", "error"],
                         [[l.a, l.b, human_rate(l.bandwidth_bytes_per_s),
                           ms(l.rtt_s) if l.rtt_s else "-", l.error] for l in links]) + "\n")
    if as_json:
        return _print_json(found)
    if not found:
        click.echo("no devices yet: start `layerfleet-agent` on a device on this LAN, or "
                   "give it --controller and a join token")
        return
    click.echo(table(
        ["id", "address", "state", "by", "arch", "cores", "memory", "speed", "link", "rtt",
         "power"],
        [[d.id, d.address, wire.DEVICE_STATE.word(d.state), wire.FOUND_BY.word(d.found_by),
          d.arch, d.cores, human_bytes(d.memory_bytes),
          human_flops(d.flops_per_s) + "FLOP/s" if d.flops_per_s else "-",
          human_rate(d.link_bandwidth_bytes_per_s), ms(d.link_rtt_s) if d.link_rtt_s else "-",
          f"{d.power_w:.1f} W ({d.energy_method})" if d.energy_method else "-"]
         for d in found]))


# -- models -----------------------------------------------------------------------------------

@click.group()
def models() -> None:
    """Register and list models."""


@models.command("add")
@click.argument("model")
@click.option("--name", default="", help="Registry name (default: file stem or architecture).")
@click.option("--input-shape", default="", metavar="H,W,C",
              help="Fixed input shape without the batch dimension, e.g. 224,224,3.")
@controller_option
@json_option
@fails_cleanly
def models_add(model: str, name: str, input_shape: str, address: str, as_json: bool) -> None:
    """Register MODEL: a .keras/.h5 file, a SavedModel directory, or a keras.applications
    architecture name (built with weights=None)."""
    shape = parse_shape(input_shape) or ()
    with _client(address) as lf:
        if Path(model).exists():
            size = Path(model).stat().st_size if Path(model).is_file() else 0
            with click.progressbar(length=max(size, 1), label=f"uploading {model}",
                                   file=sys.stderr) as bar:
                def progress(done: int, total: int) -> None:
                    bar.update(done - bar.pos)
                info = lf.register_file(model, name=name, input_shape=shape, progress=progress)
        elif "/" in model or model.endswith((".keras", ".h5")):
            raise ValueError(f"{model}: no such file or directory")
        else:
            info = lf.register_builtin(model, name=name, input_shape=shape)
    if as_json:
        return _print_json(info)
    click.echo(f"registered {info.name}: {info.layers} layers, {human_flops(info.flops)}FLOPs, "
               f"{human_bytes(info.param_bytes)} of parameters ({info.source})")


@models.command("list")
@controller_option
@json_option
@fails_cleanly
def models_list(address: str, as_json: bool) -> None:
    """List registered models."""
    with _client(address) as lf:
        found = lf.models()
    if as_json:
        return _print_json(found)
    click.echo(table(["name", "source", "layers", "FLOPs", "params", "inputs", "digest"],
                     [[m.name, m.source, m.layers, human_flops(m.flops),
                       human_bytes(m.param_bytes),
                       " ".join(f"{list(i.shape)}" for i in m.inputs), m.digest[:12]]
                      for m in found]))


# -- plan and deploy --------------------------------------------------------------------------

_objective = click.option("--objective", type=click.Choice(states.OBJECTIVES),
                          default="latency", show_default=True, help="What the plan optimises.")
_sla = click.option("--sla", "sla_ms", type=float, default=0.0, metavar="MS",
                    help="Latency SLA in ms (needed by --objective energy).")
_redundancy = click.option("--redundancy", type=click.Choice(states.REDUNDANCY), default="none",
                           show_default=True,
                           help="gnh: add replicas by the Greedy Nominator Heuristic.")


@click.command()
@click.argument("model")
@_objective
@_sla
@_redundancy
@click.option("--top", "top_k", type=int, default=3, show_default=True,
              help="How many candidate placements to list.")
@controller_option
@json_option
@fails_cleanly
def plan(model: str, objective: str, sla_ms: float, redundancy: str, top_k: int, address: str,
         as_json: bool) -> None:
    """Dry run: the best placements of MODEL on the fleet, with predictions. Touches no agent."""
    with _client(address) as lf:
        reply = lf.plan(model, objective=objective, sla_ms=sla_ms, redundancy=redundancy,
                        top_k=top_k)
    if as_json:
        return _print_json(reply)
    for n, cand in enumerate(reply.candidates):
        click.echo(f"plan {n} ({cand.strategy}): latency {ms(cand.latency_s)}, "
                   f"throughput {cand.throughput_rps:.1f}/s, energy {cand.energy_j:.3f} J")
        click.echo(_stage_table(cand))
        click.echo("")
    if reply.baselines:
        click.echo("baselines:")
        click.echo(table(["strategy", "latency", "throughput/s", "energy J"],
                         [[b.strategy, ms(b.latency_s), round(b.throughput_rps, 2),
                           round(b.energy_j, 4)] for b in reply.baselines]))
    click.echo(f"\ncommit one with: layerfleet deploy {model} --plan N")


def _stage_table(cand: Any) -> str:
    return table(["stage", "layers", "device", "replicas", "compute", "transfer in", "bytes in",
                  "memory"],
                 [[i, f"{s.start}-{s.stop - 1} ({s.first_layer}..{s.last_layer})", s.device,
                   ",".join(s.replicas) or "-", ms(s.compute_s), ms(s.transfer_in_s),
                   human_bytes(s.bytes_in), human_bytes(s.memory_bytes)]
                  for i, s in enumerate(cand.stages)])


@click.command()
@click.argument("model")
@click.option("--name", default="", help="Deployment name (default: the model name).")
@click.option("--plan", "plan_index", type=int, default=0, show_default=True,
              help="Which of `layerfleet plan`'s candidates to commit.")
@_objective
@_sla
@_redundancy
@controller_option
@json_option
@fails_cleanly
def deploy(model: str, name: str, plan_index: int, objective: str, sla_ms: float,
           redundancy: str, address: str, as_json: bool) -> None:
    """Plan, convert, push and activate MODEL on the fleet, with progress."""
    steps = []
    with _client(address) as lf:
        with click.progressbar(length=1000, label="deploying", file=sys.stderr,
                               show_percent=True) as bar:
            for step in lf.deploy(model, name=name, objective=objective, sla_ms=sla_ms,
                                  redundancy=redundancy, plan=plan_index):
                steps.append(step)
                bar.label = f"{wire.PHASE.word(step.phase)}: {step.message}"[:60]
                bar.update(int(step.fraction * 1000) - bar.pos)
        final = lf.deployment(steps[-1].deployment) if steps else None
    if as_json:
        return _print_json(final)
    if final is not None:
        _print_deployment(final)


@click.command()
@click.argument("name", required=False)
@controller_option
@json_option
@fails_cleanly
def deployments(name: str | None, address: str, as_json: bool) -> None:
    """List deployments, or describe NAME stage by stage."""
    with _client(address) as lf:
        found = [lf.deployment(name)] if name else lf.deployments()
    if as_json:
        return _print_json(found)
    if name:
        return _print_deployment(found[0])
    click.echo(table(["name", "model", "state", "stages", "devices", "predicted", "error"],
                     [[d.name, d.model, wire.DEPLOYMENT_STATE.word(d.state), len(d.stages),
                       ",".join(s.device for s in d.stages), ms(d.plan.latency_s), d.error]
                      for d in found]))


def _print_deployment(d: Any) -> None:
    click.echo(f"{d.name}: {wire.DEPLOYMENT_STATE.word(d.state)} (model {d.model})"
               + (f": {d.error}" if d.error else ""))
    click.echo(table(["stage", "layers", "device", "address", "replicas", "state", "shard"],
                     [[s.stage, f"{s.start}-{s.stop - 1}", s.device, s.address,
                       ",".join(s.replicas) or "-", wire.STAGE_STATE.word(s.state),
                       f"{s.shard_sha256[:12]} {human_bytes(s.shard_bytes)}"]
                      for s in d.stages]))


@click.command()
@click.argument("name")
@controller_option
@json_option
@fails_cleanly
def undeploy(name: str, address: str, as_json: bool) -> None:
    """Stop serving deployment NAME and free its shards on the agents."""
    with _client(address) as lf:
        d = lf.undeploy(name)
    if as_json:
        return _print_json(d)
    click.echo(f"{d.name}: {wire.DEPLOYMENT_STATE.word(d.state)}")


# -- infer ------------------------------------------------------------------------------------

@click.command()
@click.argument("deployment")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("--output", type=click.Path(dir_okay=False),
              help="Save the outputs: .npy (one output) or .npz.")
@click.option("--top", "top_k", type=int, default=5, show_default=True,
              help="Classes to show for a classifier's output.")
@controller_option
@json_option
@fails_cleanly
def infer(deployment: str, input_path: str, output: str | None, top_k: int, address: str,
          as_json: bool) -> None:
    """Run INPUT through DEPLOYMENT. INPUT is .npy, .npz (one array per model input) or an
    image (resized to the input's height and width, scaled to [0, 1] float32)."""
    with _client(address) as lf:
        inputs = _read_input(Path(input_path), lambda: lf.deployment(deployment))
        result = lf.infer(deployment, inputs)
    if output:
        _write_output(Path(output), result.outputs)
    if as_json:
        click.echo(json.dumps({
            "outputs": {k: v.tolist() for k, v in result.outputs.items()},
            "hops": [json_format.MessageToDict(h, preserving_proto_field_name=True)
                     for h in result.hops],
            "total_s": result.total_s, "exited_at_stage": result.exited_at_stage}))
        return
    for name, value in result.outputs.items():
        flat = value.reshape(-1)
        if value.ndim == 2 and value.shape[0] == 1 and flat.size > 1:
            best = np.argsort(flat)[::-1][:top_k]
            click.echo(f"{name}: top {len(best)} " + ", ".join(
                f"class {i} ({flat[i]:.3f})" for i in best))
        else:
            click.echo(f"{name}: {value.dtype.name}{list(value.shape)}")
    click.echo(table(["stage", "device", "queue", "compute", "forward"],
                     [[h.stage, h.device, ms(h.queue_s), ms(h.compute_s), ms(h.forward_s)]
                      for h in result.hops]))
    click.echo(f"total {ms(result.total_s)} at the controller")


def _read_input(path: Path, deployment: Callable[[], Any]) -> Any:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    return _read_image(path, deployment())


def _read_image(path: Path, dep: Any) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("reading images needs Pillow: pip install pillow "
                         "(or pass a .npy file)") from None
    if len(dep.inputs) != 1 or len(dep.inputs[0].shape) != 4:
        raise ValueError(f"deployment {dep.name} does not take one image; pass a .npy/.npz")
    _, height, width, channels = dep.inputs[0].shape
    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB").resize((width, height))
        array = np.asarray(img, dtype=np.float32) / 255.0
    return array.reshape(1, height, width, channels)


def _write_output(path: Path, outputs: dict[str, np.ndarray]) -> None:
    if path.suffix == ".npz":
        np.savez(path, **outputs)
    elif len(outputs) == 1:
        np.save(path, next(iter(outputs.values())), allow_pickle=False)
    else:
        raise ValueError(f"the model has {len(outputs)} outputs: use an .npz for --output")


# -- events -----------------------------------------------------------------------------------

@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--after", "after_id", type=int, default=0, help="Only events after this id.")
@controller_option
@json_option
@fails_cleanly
def events(follow: bool, after_id: int, address: str, as_json: bool) -> None:
    """Show the controller's event log (joins, devices down, deploys, failures)."""
    with _client(address) as lf:
        try:
            for e in lf.events(after_id=after_id, follow=follow):
                if as_json:
                    click.echo(json.dumps(json_format.MessageToDict(
                        e, preserving_proto_field_name=True)))
                else:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
                    click.echo(f"{e.id:>5}  {stamp}  {e.kind:<20} {e.subject:<16} {e.message}")
        except KeyboardInterrupt:
            pass
