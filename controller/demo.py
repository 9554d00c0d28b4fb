"""`layerfleet demo`: the whole path on one machine, with nothing to set up.

Starts a controller and three agents on loopback (state in a temporary directory; the agents
join with a token, as agents off the controller's LAN do), trains a small CNN on
scikit-learn's bundled digits for a few seconds (30 epochs), registers it and MobileNetV2,
deploys each across the three agents, classifies the held-out digits through the fleet, and
prints the accuracy, the placement and the latency per hop. Then stops everything.

The demo asks for the throughput objective: on three identical agents on one machine, the
latency objective rightly keeps a small model on one agent (every hop costs time), while
throughput spreads it over all three as a pipeline.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's banner off the demo

from layerfleet.controller import wire
from layerfleet.controller.tables import human_bytes, ms, table
from layerfleet.v1 import controller_pb2

_SERVING = re.compile(r"serving on (\S+)")
_DASHBOARD = re.compile(r"dashboard and /metrics on (\S+)")


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen[str]
    address: str
    log_path: Path


def _start(name: str, argv: list[str], log_path: Path, timeout_s: float = 60.0,
           env: dict[str, str] | None = None) -> Daemon:
    """Start a daemon and wait for its 'serving on HOST:PORT' line."""
    log = log_path.open("w")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = _SERVING.search(log_path.read_text())
        if match:
            return Daemon(name, process, match.group(1), log_path)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    tail = log_path.read_text()[-2000:]
    raise RuntimeError(f"{name} did not start; its log ends with:\n{tail}")


def _stop(daemons: list[Daemon]) -> None:
    for d in daemons:
        if d.process.poll() is None:
            d.process.send_signal(signal.SIGTERM)
    for d in daemons:
        try:
            d.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            d.process.kill()


def _bin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: pip install -e '.[all]'")
    return found


@contextlib.contextmanager
def local_fleet(workdir: Path, n_agents: int = 3) -> Iterator[tuple[Daemon, list[Daemon]]]:
    """A controller and n agents on loopback, stopped on exit."""
    controller_state = workdir / "controller"
    token = subprocess.run([_bin("layerfleet-controller"), "token", "create", "--state-dir",
                            str(controller_state), "--label", "demo"],
                           check=True, capture_output=True, text=True).stdout.strip()
    daemons: list[Daemon] = []
    try:
        controller = _start("controller", [
            _bin("layerfleet-controller"), "serve", "--listen", "127.0.0.1:0", "--state-dir",
            str(controller_state), "--no-mdns", "--heartbeat", "1", "--http", "127.0.0.1:0"],
            workdir / "controller.log")
        daemons.append(controller)
        agents = []
        for i in range(n_agents):
            agent = _start(f"agent {i}", [
                _bin("layerfleet-agent"), "--listen", "127.0.0.1:0", "--state-dir",
                str(workdir / f"agent-{i}"), "--no-mdns", "--threads", "1",
                "--controller", controller.address],
                workdir / f"agent-{i}.log",
                # A secret on the command line is readable by every local user (ps).
                env={"LAYERFLEET_JOIN_TOKEN": token})
            daemons.append(agent)
            agents.append(agent)
        yield controller, agents
    finally:
        _stop(daemons)


def _wait_for_devices(client: Any, n: int, timeout_s: float = 60.0) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        up = [d for d in client.devices()
              if d.state == controller_pb2.DEVICE_STATE_UP and d.flops_per_s > 0]
        if len(up) >= n:
            return up
        time.sleep(0.2)
    raise RuntimeError(f"only {len(up)} of {n} agents joined and calibrated in {timeout_s:.0f} s")


def train_digits_cnn(path: Path, epochs: int = 30, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """Train a small CNN on sklearn's digits; save it; return held-out x, y and Keras accuracy."""
    from layerfleet.controller.partition.tf import keras as _keras

    keras = _keras()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(seed)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="digit"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="digits_cnn")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    model.save(path)
    return x_test, y_test, accuracy


def _show_deployment(client: Any, name: str) -> None:
    dep = client.deployment(name)
    click.echo(table(["stage", "layers", "device", "address", "shard"],
                     [[s.stage, f"{s.start}-{s.stop - 1}", s.device, s.address,
                       human_bytes(s.shard_bytes)] for s in dep.stages]))


def _hop_table(outcomes: list[Any]) -> str:
    stages = sorted({h.stage for o in outcomes for h in o.hops})
    rows = []
    for stage in stages:
        hops = [h for o in outcomes for h in o.hops if h.stage == stage]
        rows.append([stage, hops[0].device, ms(float(np.median([h.compute_s for h in hops]))),
                     ms(float(np.median([h.queue_s for h in hops]))),
                     ms(float(np.median([h.forward_s for h in hops])))])
    total = ms(float(np.median([o.total_s for o in outcomes])))
    return table(["stage", "device", "compute (median)", "queue", "forward"], rows) + \
        f"\nend to end at the controller: {total} (median of {len(outcomes)})"


def _deploy(client: Any, model: str) -> None:
    for step in client.deploy(model, objective="throughput"):
        click.echo(f"  {wire.PHASE.word(step.phase):<8} {step.message}")


@click.command()
@click.option("--agents", "n_agents", type=int, default=3, show_default=True,
              help="How many agents to start.")
@click.option("--epochs", type=int, default=30, show_default=True,
              help="Training epochs for the digits CNN (a few seconds).")
@click.option("--mobilenet/--no-mobilenet", default=True, show_default=True,
              help="Also deploy MobileNetV2 (224x224, random weights: about 30 s more).")
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs, state).")
def demo(n_agents: int, epochs: int, mobilenet: bool, keep: bool) -> None:
    """Start a controller and agents here, deploy two models across them, and classify."""
    from layerfleet.controller.client import ControllerClient
    from layerfleet.controller.errors import ApiError

    workdir = Path(tempfile.mkdtemp(prefix="layerfleet-demo-"))
    try:
        click.echo(f"starting a controller and {n_agents} agents on loopback (state in "
                   f"{workdir})")
        with local_fleet(workdir, n_agents) as (controller, agents), \
                ControllerClient(controller.address) as client:
            devices = _wait_for_devices(client, n_agents)
            dashboard = _DASHBOARD.search(controller.log_path.read_text())
            if dashboard:
                click.echo(f"dashboard (while the demo runs): {dashboard.group(1)}")
            click.echo(table(["device", "address", "speed"],
                             [[d.id[:12], d.address, f"{d.flops_per_s / 1e9:.2f} GFLOP/s"]
                              for d in devices]))

            click.echo(f"\ntraining a small CNN on scikit-learn's digits ({epochs} epochs)")
            x_test, y_test, keras_accuracy = train_digits_cnn(workdir / "digits_cnn.keras",
                                                              epochs)
            client.register_file(workdir / "digits_cnn.keras", name="digits")
            click.echo("deploying digits across the fleet:")
            _deploy(client, "digits")
            _show_deployment(client, "digits")
            started = time.perf_counter()
            outcomes = client.infer_many("digits", [x[None] for x in x_test])
            elapsed = time.perf_counter() - started
            predicted = np.array([int(np.argmax(o.output)) for o in outcomes])
            accuracy = float(np.mean(predicted == y_test))
            click.echo(f"\ndigits: {accuracy:.1%} of {len(y_test)} held-out digits right "
                       f"through the fleet (Keras in-process: {keras_accuracy:.1%}); "
                       f"{len(y_test) / elapsed:.0f} digits/s pipelined on one stream")
            click.echo("latency per hop, one request at a time:")
            click.echo(_hop_table([client.infer("digits", x[None]) for x in x_test[:30]]))

            if mobilenet:
                click.echo("\nregistering MobileNetV2 (224x224, weights=None) and deploying:")
                client.register_builtin("MobileNetV2", input_shape=(224, 224, 3))
                _deploy(client, "MobileNetV2")
                _show_deployment(client, "MobileNetV2")
                image = _sample_image()
                outcomes = [client.infer("MobileNetV2", image) for _ in range(10)]
                click.echo(f"MobileNetV2 on scikit-learn's sample image: class "
                           f"{int(np.argmax(outcomes[0].output))} (random weights); "
                           f"latency per hop, one request at a time:")
                click.echo(_hop_table(outcomes))
        click.echo("\nstopped the controller and agents cleanly")
    except (ApiError, RuntimeError, subprocess.CalledProcessError) as exc:
        click.echo(f"layerfleet demo: {exc}", err=True)
        click.echo(f"logs are in {workdir}", err=True)
        keep = True
        sys.exit(1)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _sample_image() -> np.ndarray:
    from sklearn.datasets import load_sample_image

    try:
        img = load_sample_image("china.jpg")
    except ImportError:  # sklearn reads the jpg with Pillow
        rng = np.random.default_rng(0)
        return rng.random((1, 224, 224, 3), dtype=np.float32)
    crop = img[:224 * 2:2, :224 * 2:2].astype(np.float32) / 127.5 - 1.0
    return crop[None]
