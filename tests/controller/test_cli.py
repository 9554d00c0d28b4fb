"""`layerfleet` as a user types it, against a real controller and agents; and the demo."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from layerfleet.v1 import controller_pb2

from .conftest import save_small_model

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


async def lf(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(BIN / "layerfleet"), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_drives_the_whole_path(fleet, tmp_path):
    address = ["--controller", fleet.controller.address]
    path = save_small_model(tmp_path / "small.keras")
    code, out, err = await lf("models", "add", str(path), *address)
    assert code == 0, err
    assert "registered small: 5 layers" in out
    code, out, _ = await lf("models", "list", "--json", *address)
    assert json.loads(out)[0]["name"] == "small"
    code, out, _ = await lf("devices", *address)
    assert code == 0 and out.count(" up ") == 3
    code, out, _ = await lf("plan", "small", "--objective", "throughput", "--top", "2", *address)
    assert code == 0 and "plan 0" in out and "baselines:" in out
    code, out, err = await lf("deploy", "small", *address)
    assert code == 0, err
    assert "small: active" in out
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((1, 12, 12, 1), np.float32))
    code, out, err = await lf("infer", "small", str(tmp_path / "x.npy"), "--output",
                              str(tmp_path / "y.npy"), *address)
    assert code == 0, err
    assert "probs: top 5" in out and "total" in out
    assert np.load(tmp_path / "y.npy").shape == (1, 10)
    code, out, _ = await lf("deployments", *address)
    assert "active" in out
    code, out, _ = await lf("undeploy", "small", *address)
    assert code == 0 and "undeployed" in out
    code, out, _ = await lf("events", *address)
    assert "deploy.active" in out and "deploy.undeployed" in out


@pytest.mark.parametrize("args, message", [
    (["infer", "nope", "{x}"], "not found: unknown deployment 'nope'"),
    (["plan", "nope"], "unknown model 'nope'"),
    (["models", "add", "missing.keras"], "no such file"),
    (["plan", "x", "--objective", "energy"], "unknown model"),
])
async def test_cli_errors_are_one_line_and_exit_1(fleet, tmp_path, args, message):
    np.save(tmp_path / "x.npy", np.zeros((1, 12, 12, 1), np.float32))
    args = [a.format(x=tmp_path / "x.npy") for a in args]
    code, _, err = await lf(*args, "--controller", fleet.controller.address)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


async def test_an_unreachable_controller_is_one_clear_line():
    code, _, err = await lf("devices", "--controller", "127.0.0.1:9")
    assert code == 1 and "unavailable" in err and "Traceback" not in err


def test_every_cli_command_is_documented_in_the_readme_and_has_help():
    from layerfleet.controller.cli import _COMMANDS

    readme = (ROOT / "README.md").read_text()
    for name in _COMMANDS:
        assert f"layerfleet {name}" in readme, f"README does not show `layerfleet {name}`"
        result = subprocess.run([str(BIN / "layerfleet"), name, "--help"], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0 and "Usage:" in result.stdout


@pytest.mark.slow
def test_the_demo_runs_the_whole_path_and_stops_cleanly():
    result = subprocess.run([str(BIN / "layerfleet"), "demo", "--no-mobilenet"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"digits: ([\d.]+)% of", result.stdout).group(1))
    keras_accuracy = float(re.search(r"Keras in-process: ([\d.]+)%", result.stdout).group(1))
    assert accuracy == keras_accuracy and accuracy > 80
    assert "latency per hop" in result.stdout
    assert "stopped the controller and agents cleanly" in result.stdout


@pytest.mark.slow
async def test_a_controller_killed_mid_deploy_leaves_a_consistent_registry(tmp_path):
    from layerfleet.agent.main import AgentServer, Settings
    from layerfleet.controller.client import ControllerClient
    from layerfleet.controller.registry import Registry

    state = tmp_path / "controller"
    token = Registry(state / "controller.db").create_token("t")

    def start():
        process = subprocess.Popen(
            [str(BIN / "layerfleet-controller"), "serve", "--listen", "127.0.0.1:0",
             "--state-dir", str(state), "--no-mdns", "--heartbeat", "0.3", "--http", "off"],
            stderr=subprocess.PIPE, text=True)
        for line in process.stderr:
            if "serving on" in line:
                threading_drain(process)
                return process, line.split("serving on ")[1].strip()
        raise RuntimeError("controller did not start")

    process, address = start()
    agents = []
    for i in range(2):
        agent = AgentServer(Settings(listen="127.0.0.1:0", state_dir=str(tmp_path / f"a{i}"),
                                     mdns=False, threads=1, controller=address,
                                     join_token=token))
        await agent.start()
        agents.append(agent)
    try:
        client = ControllerClient(address)
        for _ in range(100):
            devices = await asyncio.to_thread(client.devices)
            if sum(d.flops_per_s > 0 for d in devices) == 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(client.register_builtin, "MobileNetV2",
                                input_shape=(96, 96, 3))

        def deploy_until_convert():
            for step in client.deploy("MobileNetV2", objective="throughput"):
                if step.phase == controller_pb2.DEPLOY_PHASE_CONVERT:
                    process.send_signal(signal.SIGKILL)  # mid-conversion, nothing pushed
                    return

        with pytest.raises(Exception):
            await asyncio.to_thread(lambda: (deploy_until_convert(), client.deployments()))
        process.wait(10)
        client.close()
        registry = Registry(state / "controller.db")
        assert registry.deployment("MobileNetV2").state == "deploying"
        registry.close()

        process, address = start()
        client = ControllerClient(address)
        dep = await asyncio.to_thread(client.deployment, "MobileNetV2")
        assert dep.state == controller_pb2.DEPLOYMENT_STATE_FAILED and "interrupted" in dep.error
        assert [m.name for m in await asyncio.to_thread(client.models)] == ["MobileNetV2"]
        assert all(not a.pipeline.routes for a in agents)
        client.close()
    finally:
        for agent in agents:
            await agent.stop(grace_s=0)
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def threading_drain(process: subprocess.Popen) -> None:
    """Keep reading the daemon's stderr so it never blocks on a full pipe."""
    import threading

    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
