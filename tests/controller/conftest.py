"""A real controller and real agents on loopback, joined with a token like agents off the
controller's LAN."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from layerfleet.agent.main import AgentServer, Settings
from layerfleet.controller.client import ControllerClient
from layerfleet.controller.main import ControllerServer
from layerfleet.controller.main import Settings as ControllerSettings


@dataclass
class LocalFleet:
    controller: ControllerServer
    agents: list[AgentServer]
    token: str
    root: Path

    def client(self) -> ControllerClient:
        return ControllerClient(self.controller.address)

    async def add_agent(self, name: str) -> AgentServer:
        agent = AgentServer(Settings(listen="127.0.0.1:0", state_dir=str(self.root / name),
                                     mdns=False, threads=1, controller=self.controller.address,
                                     join_token=self.token, grace_s=1.0))
        await agent.start()
        self.agents.append(agent)
        return agent

    async def wait_devices(self, n: int, timeout: float = 30.0,
                           calibrated: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = [d for d in self.controller.registry.devices()
                  if d.state == "up" and (d.flops_per_s > 0 or not calibrated)]
            if len(up) >= n:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{n} devices did not come up")


async def start_controller(root: Path, replan: bool = False, calibrate: bool = True,
                           **settings: Any) -> ControllerServer:
    # Re-planning off unless a test is about it: the others pin placements down.
    # Heartbeats every 0.3 s, but down only after 3 s of silence: the in-process agents
    # share the test's GIL with TensorFlow conversions, which can hold it for a second.
    server = ControllerServer(ControllerSettings(**{
        "listen": "127.0.0.1:0", "state_dir": root / "controller", "mdns": False,
        "heartbeat_interval_s": 0.3, "missed_heartbeats": 10, "cache_dir": root / "cache",
        "replan": replan, "calibrate": calibrate, **settings}))
    await server.start()
    return server


@contextlib.asynccontextmanager
async def three_agents(root: Path, **controller: Any) -> AsyncIterator[LocalFleet]:
    """A controller and three joined, calibrated agents; all stopped afterwards."""
    server = await start_controller(root, **controller)
    fleet = LocalFleet(server, [], server.registry.create_token("tests"), root)
    try:
        for i in range(3):
            await fleet.add_agent(f"agent-{i}")
        await fleet.wait_devices(3)
        yield fleet
    finally:
        for agent in fleet.agents:
            await agent.stop(grace_s=0)
        await fleet.controller.stop(grace_s=0)


@pytest.fixture
async def fleet(tmp_path):
    async with three_agents(tmp_path) as fleet:
        yield fleet


@pytest.fixture
async def dashboard_fleet(tmp_path):
    """Like `fleet`, with the dashboard and /metrics on a free loopback port."""
    async with three_agents(tmp_path, http="127.0.0.1:0") as fleet:
        yield fleet


def pin_speed(controller: ControllerServer, flops_per_s: float = 50e9) -> None:
    """Give every device the same measured numbers (calibration on a shared 2-core box is
    too noisy for a test that needs to know the best plan)."""
    for d in controller.registry.devices():
        d.flops_per_s, d.link_bandwidth_Bps, d.link_rtt_s = flops_per_s, 1e9, 0.0005
        controller.registry.upsert_device(d)


def save_small_model(path: Path, seed: int = 0) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 1), name="pixels")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    keras.Model(inp, out, name="small").save(path)
    return path
