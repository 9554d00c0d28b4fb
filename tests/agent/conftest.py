"""Real agents on loopback (in-process AgentServer or the console script) and real shards
made by the partitioner."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from layerfleet.agent.client import AgentClient
from layerfleet.agent.main import AgentServer, Settings
from layerfleet.controller.partition.manifest import Manifest


@dataclass(frozen=True)
class Split:
    """A model cut into shards on disk, with its manifest."""

    directory: Path
    manifest: Manifest

    def shard(self, i: int) -> bytes:
        return self.manifest.shard_path(self.directory, i).read_bytes()

    def random_input(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {t.name: rng.random(t.shape, dtype=np.float32) for t in self.manifest.inputs}


def _split(model, cuts, out: Path, cache: Path) -> Split:
    from layerfleet.controller.partition import split_model

    return Split(out, split_model(model, cuts, out, cache_dir=cache))


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test():
    """Every thread an agent starts (connections, next hops, timers, pools) ends with it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        # Not ours: the test loop's default executor, and grpc.aio's poller (one for the
        # process, started on first use).
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()
                and not t.name.startswith("asyncio_") and "_poll_wrapper" not in t.name]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads outlived the test: {sorted(t.name for t in left)}"


@pytest.fixture(scope="session")
def small_split(tmp_path_factory, shard_cache) -> Split:
    """A small CNN in 3 shards: quick to run, for the behaviour tests."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Add(name="skip")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    model = keras.Model(inp, out, name="small")
    return _split(model, [1, 3], tmp_path_factory.mktemp("small"), shard_cache)


@pytest.fixture(scope="session")
def mobilenet_split(tmp_path_factory, shard_cache) -> Split:
    """MobileNetV2 (alpha 0.35, 96x96: the real architecture at a size CI converts fast)."""
    import keras
    from layerfleet.controller.partition import Analysis, balanced_cuts

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)
    cuts = balanced_cuts(Analysis(model).profile, 3)
    return _split(model, cuts, tmp_path_factory.mktemp("mobilenet"), shard_cache)


def settings(state_dir: Path, **overrides) -> Settings:
    defaults = {"listen": "127.0.0.1:0", "state_dir": str(state_dir), "mdns": False,
                "threads": 1, "grace_s": 2.0}
    return Settings(**{**defaults, **overrides})


@pytest.fixture
async def agents(tmp_path) -> AsyncIterator[Callable[..., asyncio.Future]]:
    """start(name, **settings) -> a running AgentServer; all stopped at the end."""
    started: list[AgentServer] = []

    async def start(name: str = "a", **overrides) -> AgentServer:
        server = AgentServer(settings(tmp_path / name, **overrides))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop(grace_s=0)


async def deploy_chain(split: Split, servers: list[AgentServer], deployment: str = "d",
                       **route) -> None:
    """Upload shard i to servers[i] and route each stage to the next (last first)."""
    for i in reversed(range(len(servers))):
        async with AgentClient(servers[i].address) as client:
            sha = await client.upload_shard(split.shard(i))
            nxt = [servers[i + 1].address] if i + 1 < len(servers) else []
            await client.set_route(deployment=deployment, stage=i, shard_sha256=sha,
                                   next_hops=nxt, **route)


SERVING = re.compile(r"serving on (\S+)")


@dataclass
class AgentProcess:
    process: subprocess.Popen
    address: str

    def terminate(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_agent_process(state_dir: Path, *extra: str, env: dict | None = None,
                        listen: str = "127.0.0.1:0") -> AgentProcess:
    """The real console script, as systemd would run it; its log in STATE_DIR.log (a pipe
    nobody reads would fill up and block the agent)."""
    exe = str(Path(sys.executable).parent / "layerfleet-agent")
    log_path = Path(f"{state_dir}.log")
    with log_path.open("a") as log:
        process = subprocess.Popen(
            [exe, "--listen", listen, "--state-dir", str(state_dir), "--no-mdns",
             "--threads", "1", *extra],
            stderr=log, text=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        match = SERVING.search(log_path.read_text())
        if match:
            return AgentProcess(process, match.group(1))
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"agent did not start: {log_path.read_text()[-500:]}")
