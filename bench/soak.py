"""Chaos soak: requests through a 3-stage deployment on real agent processes while agents are
SIGKILLed (and restarted), SIGSTOPped (and continued) at random; every answer checked.

    python bench/soak.py [--requests 10000] [--in-flight 8] [--no-replicas] [--seed 0]

Each stage runs on two agents (or one, with --no-replicas); the client sends each request
to a stage-0 agent with the same failover rules the agents use between themselves
(client.infer_any), with a 10 s deadline. A chaos loop acts every 1-2.5 s on a random agent
whose twin is up: SIGKILL and a restart on the same ports 0.5-1.5 s later (its shards and
routes come back from its state directory), or SIGSTOP for 1-3 s then SIGCONT. Every answer
is compared with the same shards run in this process. Prints requests ok / wrong / failed /
lost, the longest gap without an answer after each kind of trouble, and writes
bench/results/soak.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write  # noqa: E402

BIN = Path(sys.executable).parent
STAGES = 3
DEADLINE_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Agent:
    """One `layerfleet-agent` process on fixed ports, restartable in place."""

    name: str
    state: Path
    port: int = field(default_factory=free_port)
    data_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    down: bool = False   # killed or stopped by the chaos loop, not yet back

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = Path(f"{self.state}.log")
        seen = log.stat().st_size if log.exists() else 0   # earlier runs' lines stay
        with log.open("a") as out:
            self.process = subprocess.Popen(
                [str(BIN / "layerfleet-agent"), "--listen", self.address, "--state-dir",
                 str(self.state), "--data-port", str(self.data_port), "--threads", "1",
                 "--no-mdns"], stderr=out)
        deadline = time.monotonic() + 30
        while "serving on" not in log.read_bytes()[seen:].decode(errors="replace"):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{self.name} did not start: {log.read_text()[-400:]}")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


def build_split(tmp: Path) -> Path:
    """A small CNN in 3 shards (a few ms a request, so 10,000 requests take minutes)."""
    from layerfleet.controller.partition import split_model
    from layerfleet.controller.partition.tf import keras

    k = keras()
    k.utils.set_random_seed(0)
    inp = k.Input((32, 32, 3), name="image")
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inp)
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = k.layers.MaxPooling2D(name="pool")(x)
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="c3")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    out = k.layers.Dense(10, activation="softmax", name="probs")(x)
    directory = tmp / "split"
    cache = Path(os.environ.get("LAYERFLEET_CACHE", tmp / "cache"))
    split_model(k.Model(inp, out), [2, 4], directory, cache_dir=cache)
    return directory


async def deploy(directory: Path, stages: list[list[Agent]]) -> None:
    from layerfleet.agent.client import AgentClient
    from layerfleet.controller.partition.manifest import Manifest

    manifest = Manifest.load(directory)
    for i in reversed(range(len(stages))):
        data = manifest.shard_path(directory, i).read_bytes()
        nxt = [a.address for a in stages[i + 1]] if i + 1 < len(stages) else []
        for agent in stages[i]:
            async with AgentClient(agent.address) as c:
                sha = await c.upload_shard(data)
                await c.set_route(deployment="soak", stage=i, shard_sha256=sha,
                                  next_hops=nxt, replica_mode="balanced")


def expected_outputs(directory: Path, inputs: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    from layerfleet.controller.partition.local import run_local

    return [run_local(directory, x)["probs"] for x in inputs]


@dataclass
class Event:
    at: float
    kind: str        # SIGKILL or SIGSTOP
    agent: str
    back_at: float = 0.0


async def chaos(stages: list[list[Agent]], events: list[Event], stop: asyncio.Event,
                rng: random.Random, plan: list[str] | None = None) -> None:
    """Trouble every 1-2.5 s, on an agent whose stage keeps one replica up: SIGKILL or
    SIGSTOP at random, or the kinds in `plan`, in order, then no more."""
    plan = list(plan) if plan is not None else None
    while not stop.is_set() and plan != []:
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(1.0, 2.5))
            return
        except TimeoutError:
            pass
        candidates = [a for stage in stages for a in stage
                      if not a.down and all(not b.down for b in stage)]
        if not candidates:
            continue
        agent = rng.choice(candidates)
        kind = plan.pop(0) if plan is not None else rng.choice(["SIGKILL", "SIGSTOP"])
        event = Event(time.monotonic(), kind, agent.name)
        events.append(event)
        agent.down = True
        agent.signal(getattr(signal, kind))
        if kind == "SIGKILL":
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            agent.process.wait(5)
            await asyncio.to_thread(agent.start)   # same ports, same state directory
        else:
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            agent.signal(signal.SIGCONT)
        event.back_at = time.monotonic()
        agent.down = False


@dataclass
class Result:
    ok: int = 0
    wrong: int = 0
    failed: Counter = field(default_factory=Counter)
    lost: int = 0
    answered_at: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def gaps(answered_at: list[float], events: list[Event]) -> dict[str, float]:
    """For each kind of trouble: the longest time without any answer, over the gaps that
    overlap an event (from its signal until 5 s after the agent was back)."""
    times = sorted(answered_at)
    out: dict[str, float] = {}
    for kind in ("SIGKILL", "SIGSTOP"):
        longest = 0.0
        for e in (e for e in events if e.kind == kind):
            window_end = (e.back_at or e.at) + 5
            for a, b in zip(times, times[1:]):
                if b >= e.at and a <= window_end:
                    longest = max(longest, b - a)
        out[kind] = longest
    return out


async def soak(requests: int, in_flight: int, replicas: int, seed: int,
               tmp: Path, plan: list[str] | None = None) -> dict[str, Any]:
    from layerfleet.agent.client import AgentClient, infer_any
    from layerfleet.agent.errors import StatusError

    directory = build_split(tmp)
    rng = random.Random(seed)
    inputs = [{"image": np.random.default_rng(i).random((1, 32, 32, 3), dtype=np.float32)}
              for i in range(16)]
    expected = expected_outputs(directory, inputs)
    stages = [[Agent(f"s{s}r{r}", tmp / f"s{s}r{r}") for r in range(replicas)]
              for s in range(STAGES)]
    everyone = [a for stage in stages for a in stage]
    for agent in everyone:
        agent.start()
    result = Result()
    events: list[Event] = []
    try:
        await deploy(directory, stages)
        entry = [AgentClient(a.address) for a in stages[0]]
        stop = asyncio.Event()
        chaos_task = asyncio.create_task(chaos(stages, events, stop, rng, plan))
        limit = asyncio.Semaphore(in_flight)
        started = time.monotonic()

        async def one(i: int) -> None:
            async with limit:
                sent = time.monotonic()
                try:
                    answer, _ = await infer_any(entry, "soak", inputs[i % 16],
                                                timeout_s=DEADLINE_S)
                except StatusError as exc:
                    result.failed[exc.code.name] += 1
                    return
                finally:
                    result.latencies.append(time.monotonic() - sent)
                result.answered_at.append(time.monotonic())
                if np.array_equal(answer.outputs["probs"], expected[i % 16]):
                    result.ok += 1
                else:
                    result.wrong += 1

        tasks = [asyncio.create_task(one(i)) for i in range(requests)]
        done, pending = await asyncio.wait(tasks, timeout=requests * 0.5 + 60)
        result.lost = len(pending)   # neither answered nor failed (must be 0: deadlines)
        for task in pending:
            task.cancel()
        stop.set()
        await chaos_task
        elapsed = time.monotonic() - started
        for client in entry:
            await client.close()
    finally:
        for agent in everyone:
            agent.stop()
    return {
        "requests": requests, "in_flight": in_flight, "replicas_per_stage": replicas,
        "seed": seed, "seconds": elapsed, "ok": result.ok, "wrong": result.wrong,
        "failed": dict(result.failed), "lost": result.lost,
        "events": [{"kind": e.kind, "agent": e.agent, "at_s": e.at - started,
                    "back_after_s": e.back_at - e.at} for e in events],
        "longest_gap_s": gaps(result.answered_at, events),
        "overall_longest_gap_s": max((b - a for a, b in zip(sorted(result.answered_at),
                                                            sorted(result.answered_at)[1:])),
                                     default=0.0),
        "latency_p50_s": statistics.median(result.latencies) if result.latencies else 0.0,
        "latency_max_s": max(result.latencies, default=0.0),
    }


def report(r: dict[str, Any]) -> None:
    kills = sum(e["kind"] == "SIGKILL" for e in r["events"])
    stops = len(r["events"]) - kills
    print(f"\n{r['requests']} requests, {r['in_flight']} in flight, {r['replicas_per_stage']} "
          f"agent(s) per stage, {r['seconds']:.1f} s, {kills} SIGKILLs and {stops} SIGSTOPs")
    print(f"  ok {r['ok']}   wrong {r['wrong']}   failed {sum(r['failed'].values())} "
          f"{r['failed'] or ''}   lost {r['lost']}")
    print(f"  longest gap without an answer: after a SIGKILL "
          f"{r['longest_gap_s']['SIGKILL']:.2f} s (goal <= 1), after a SIGSTOP "
          f"{r['longest_gap_s']['SIGSTOP']:.2f} s (goal <= 2); overall "
          f"{r['overall_longest_gap_s']:.2f} s")
    print(f"  latency p50 {r['latency_p50_s'] * 1000:.1f} ms, max {r['latency_max_s']:.2f} s "
          f"(deadline {DEADLINE_S:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--no-replicas", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(soak(args.requests, args.in_flight, 1 if args.no_replicas else 2,
                             args.seed, Path(tmp)))
    report(r)
    write(args.out or ("soak_no_replicas" if args.no_replicas else "soak"), r)


if __name__ == "__main__":
    main()
