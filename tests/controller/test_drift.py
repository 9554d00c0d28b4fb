"""Drift: idle devices are re-benchmarked now and then, and a device whose measured speed
changes enough moves the deployment; a device busy serving is not benchmarked.

Real agents (the console script, joined with a token) and a real slowdown: a cgroup v1 CPU
quota on one agent's process, as thermal throttling or a noisy neighbour would do."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from layerfleet.agent.client import AgentClient

from ..agent.conftest import AgentProcess, start_agent_process
from .conftest import start_controller

CPU_CGROUP = Path("/sys/fs/cgroup/cpu")


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


@contextlib.contextmanager
def cpu_quota(pid: int, fraction: float) -> Iterator[None]:
    """Hold every thread of process `pid` to `fraction` of one core (cgroup v1 CFS quota,
    in 10 ms periods: short enough that a benchmark run of a few ms is held too)."""
    group = CPU_CGROUP / f"layerfleet-drift-{os.getpid()}-{secrets.token_hex(3)}"
    home = next(line.split(":")[2] for line in Path(f"/proc/{pid}/cgroup").read_text()
                .splitlines() if line.split(":")[1] == "cpu")
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("10000")
        (group / "cpu.cfs_quota_us").write_text(str(int(10000 * fraction)))
        (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        with contextlib.suppress(OSError):   # the process may have exited
            (CPU_CGROUP / home.lstrip("/") / "cgroup.procs").write_text(str(pid))
        group.rmdir()


def cgroups_writable() -> bool:
    return os.access(CPU_CGROUP / "cgroup.procs", os.W_OK) and \
        (CPU_CGROUP / "cpu.cfs_quota_us").exists()


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(what)


@pytest.mark.skipif(not cgroups_writable(),
                    reason="needs a writable cgroup v1 cpu controller to slow an agent down")
async def test_a_device_that_slows_down_moves_the_deployment_and_busy_ones_are_not_measured(
        tmp_path, monkeypatch):
    controller = await start_controller(
        tmp_path, replan=True, heartbeat_interval_s=1.0, recalibrate_interval_s=0.5,
        drift_threshold=0.5, drift_sustain_s=1.5, replan_cooldown_s=0.0)
    token = controller.registry.create_token("drift")
    measured: list[str] = []   # addresses the controller asked for a benchmark, in order
    benchmark = AgentClient.benchmark

    async def counted(self, runs: int = 5):
        measured.append(self.address)
        return await benchmark(self, runs)

    monkeypatch.setattr(AgentClient, "benchmark", counted)
    processes: list[AgentProcess] = []
    try:
        for name in ("agent-a", "agent-b"):
            processes.append(await call(
                start_agent_process, tmp_path / name, "--controller", controller.address,
                env={"LAYERFLEET_JOIN_TOKEN": token}))
        await wait_for(lambda: len([d for d in controller.registry.devices()
                                    if d.state == "up" and d.flops_per_s > 0]) == 2, 60,
                       "two calibrated devices")
        x = np.random.default_rng(6).random((1, 64, 64, 32), dtype=np.float32)
        with controller_client(controller) as client:
            await call(client.register_file, compute_bound_model(tmp_path / "small.keras"))
            await call(lambda: list(client.deploy("small", objective="latency")))
            dep = await call(client.deployment, "small")
            expected = (await call(client.infer, "small", x)).output
        assert len(dep.stages) == 1   # for latency, a second hop only adds its transfer

        def settled() -> bool:
            """Both devices re-measured while idle, their planned speeds agreeing (speeds
            measured at join, while the other agent and the controller were busy starting,
            are often far off: the first re-plans correct them), no re-plan under way."""
            for device in controller.registry.devices():
                estimate = controller.drift.estimate(device.id)
                if estimate is None or abs(estimate.flops_per_s - device.flops_per_s) > \
                        0.3 * device.flops_per_s:
                    return False
            return not controller.deployer.lock("small").locked()

        await wait_for(settled, 60, "the measured speeds did not settle")
        dep = controller.registry.deployment("small")
        slow = dep.stages[0].device
        slow_process = next(p for p in processes if p.address == dep.stages[0].address)
        other = next(d.id for d in controller.registry.devices() if d.id != slow)
        planned = controller.registry.device(slow).flops_per_s

        throttled = time.time()
        with cpu_quota(slow_process.process.pid, 0.1):
            def moved() -> bool:
                """Off the slowed device, whose measured speed the planner now uses. (The
                other device may drift too: on a shared machine it speeds up when its
                neighbour is held back; either drift may trigger the move.)"""
                return slow not in {s.device for s in
                                    controller.registry.deployment("small").stages} \
                    and controller.registry.device(slow).flops_per_s < planned / 3

            try:
                await wait_for(moved, 60, "")
            except TimeoutError:
                last = [(e.kind, e.message) for e in controller.registry.events()][-6:]
                pytest.fail(f"the deployment did not move off {slow} (planned with "
                            f"{planned:.3g} FLOP/s); measured {controller.drift.observations()}"
                            f"; events {last}")
            events = [e for e in controller.registry.events() if e.time >= throttled]
            replans = [e.message for e in events if e.kind == "replan.started"]
            assert replans and all("drifted" in m or "changed" in m for m in replans), replans
            assert slow in [e.subject for e in events if e.kind == "device.recalibrated"]

            # Now the deployment runs on `other`: keep it busy, and watch the re-benchmarks
            # go to the idle (slowed) device only.
            stop = asyncio.Event()
            answers = 0

            async def keep_asking():
                nonlocal answers
                with controller_client(controller) as client:
                    while not stop.is_set():
                        np.testing.assert_array_equal(
                            (await call(client.infer, "small", x)).output, expected)
                        answers += 1

            asker = asyncio.create_task(keep_asking())
            await wait_for(lambda: answers > 5, 30, "requests flowing")
            other_address = controller.registry.device(other).address
            start = len(measured)
            await asyncio.sleep(5.0)   # a few re-benchmark rounds
            stop.set()
            await asker
            during = measured[start:]
            assert other_address not in during, during
            assert slow_process.address in during, during
    finally:
        for process in processes:
            process.terminate()
        await controller.stop(grace_s=0)


def compute_bound_model(path: Path) -> Path:
    """Three 3x3 convolutions, ~225 MFLOP: its compute, not its transfer, decides where
    it runs best (a device 10x slower adds tens of milliseconds)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 32), name="x")
    h = inp
    for i in range(3):
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name=f"c{i}")(h)
    out = keras.layers.Dense(4, name="y")(keras.layers.GlobalAveragePooling2D(name="g")(h))
    keras.Model(inp, out, name="small").save(path)
    return path


def controller_client(controller):
    from layerfleet.controller.client import ControllerClient

    return ControllerClient(controller.address)
