"""How thin the agent is, measured side by side in one run (ratios, not absolute times).

    python bench/agent_latency.py [--requests 60]

1. Latency: MobileNetV2 (224x224) in 3 shards over 3 local agents (real processes, one
   LiteRT thread each) / the same shards back to back in this process (one thread).
   Per-hop overhead = (chain - local) / 3 (each agent adds one request and one reply hop).
   Reference: a bare grpc.aio bidirectional round trip of 50 KB.
2. Throughput: the model in 2 shards over 2 agents, 16 requests in flight, / the same 2
   shards back to back in one process (one thread).
3. Bandwidth: one 8 MiB activation to an agent (a shard that reduces it to 4 KB), for a
   sweep of chunk sizes; bytes / (time - compute - small-message round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write  # noqa: E402

BIN = Path(sys.executable).parent


def build_splits(tmp: Path) -> dict[str, Path]:
    import keras

    from layerfleet.controller.partition import Analysis, balanced_cuts, load_model, split_model

    cache = Path(os.environ.get("LAYERFLEET_CACHE", tmp / "cache"))
    model = load_model("MobileNetV2", input_shape=(224, 224, 3))
    analysis = Analysis(model)
    out = {}
    for n in (2, 3):
        out[f"mobilenet{n}"] = tmp / f"mobilenet{n}"
        split_model(model, balanced_cuts(analysis.profile, n), out[f"mobilenet{n}"],
                    cache_dir=cache, analysis=analysis)
    inp = keras.Input((2048, 1024), name="big")
    reducer = keras.Model(inp, keras.layers.GlobalAveragePooling1D(name="mean")(inp),
                          name="reducer")
    out["reducer"] = tmp / "reducer"
    split_model(reducer, [], out["reducer"], cache_dir=cache)
    return out


class Agents:
    def __init__(self, tmp: Path, n: int) -> None:
        self.procs, self.addresses = [], []
        for i in range(n):
            p = subprocess.Popen([str(BIN / "layerfleet-agent"), "--listen", "127.0.0.1:0",
                                  "--state-dir", str(tmp / f"agent-{i}-{time.time_ns()}"),
                                  "--no-mdns", "--threads", "1"],
                                 stderr=subprocess.PIPE, text=True)
            for line in p.stderr:
                if "serving on" in line:
                    self.addresses.append(line.split("serving on ")[1].strip())
                    break
            self.procs.append(p)

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait(20)


async def deploy(directory: Path, addresses: list[str], name: str) -> None:
    from layerfleet.agent.client import AgentClient
    from layerfleet.controller.partition.manifest import Manifest

    manifest = Manifest.load(directory)
    for i in reversed(range(len(addresses))):
        async with AgentClient(addresses[i]) as c:
            sha = await c.upload_shard(manifest.shard_path(directory, i).read_bytes())
            await c.set_route(deployment=name, stage=i, shard_sha256=sha,
                              next_hops=addresses[i + 1:i + 2])


def local_latency(directory: Path, x: dict, runs: int) -> float:
    from layerfleet.controller.partition.local import LocalPipeline

    pipe = LocalPipeline(directory, num_threads=1)
    pipe.run(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        pipe.run(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


async def chain_latency(address: str, x: dict, runs: int) -> float:
    from layerfleet.agent.client import AgentClient

    async with AgentClient(address) as c:
        await c.infer("m", x)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            await c.infer("m", x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


async def bare_grpc_round_trip(tmp: Path, runs: int, size: int = 50_000) -> float:
    """A grpc.aio bidi echo of `size` bytes on loopback: the floor any hop pays."""
    agents = Agents(tmp, 1)
    try:
        import grpc

        from layerfleet.v1 import agent_pb2, agent_pb2_grpc

        payload = agent_pb2.Blob(data=bytes(size))
        async with grpc.aio.insecure_channel(agents.addresses[0]) as ch:
            queue: asyncio.Queue = asyncio.Queue()

            async def gen():
                while (m := await queue.get()) is not None:
                    yield m

            call = agent_pb2_grpc.AgentStub(ch).Echo(gen())
            times = []
            for _ in range(runs + 5):
                t = time.perf_counter()
                await queue.put(payload)
                await call.read()
                times.append(time.perf_counter() - t)
            await queue.put(None)
        return statistics.median(times[5:])
    finally:
        agents.stop()


def local_throughput(directory: Path, xs: list[dict]) -> float:
    from layerfleet.controller.partition.local import LocalPipeline

    pipe = LocalPipeline(directory, num_threads=1)
    pipe.run(xs[0])
    t = time.perf_counter()
    for x in xs:
        pipe.run(x)
    return len(xs) / (time.perf_counter() - t)


async def chain_throughput(address: str, xs: list[dict], in_flight: int = 16) -> float:
    from layerfleet.agent.client import AgentClient

    async with AgentClient(address) as c:
        await c.infer("m", xs[0])
        sem = asyncio.Semaphore(in_flight)

        async def one(x):
            async with sem:
                await c.infer("m", x)

        t = time.perf_counter()
        await asyncio.gather(*(one(x) for x in xs))
        return len(xs) / (time.perf_counter() - t)


async def bandwidth(address: str, chunk_bytes: int, runs: int) -> tuple[float, float]:
    from layerfleet.agent.stream import InferStream

    big = {"big": np.random.default_rng(0).random((1, 2048, 1024), dtype=np.float32)}
    stream = InferStream(address, chunk_bytes=chunk_bytes)
    try:
        await stream.infer("r", 0, big)
        times, computes = [], []
        for _ in range(runs):
            t = time.perf_counter()
            reply = await stream.infer("r", 0, big)
            times.append(time.perf_counter() - t)
            computes.append(reply.hops[0].compute_s + reply.hops[0].queue_s)
        return statistics.median(times), statistics.median(computes)
    finally:
        await stream.close()


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    splits = build_splits(tmp)
    rng = np.random.default_rng(0)
    x = {"input_layer": rng.random((1, 224, 224, 3), dtype=np.float32)}
    from layerfleet.controller.partition.manifest import Manifest

    x = {Manifest.load(splits["mobilenet3"]).inputs[0].name: x["input_layer"]}
    results: dict = {}

    # 1. latency, 3 shards
    agents = Agents(tmp, 3)
    try:
        await deploy(splits["mobilenet3"], agents.addresses, "m")
        local = local_latency(splits["mobilenet3"], x, args.requests)
        chain = await chain_latency(agents.addresses[0], x, args.requests)
        local_again = local_latency(splits["mobilenet3"], x, args.requests)
    finally:
        agents.stop()
    local = min(local, local_again)  # both measured around the chain: fairer on a noisy box
    bare = await bare_grpc_round_trip(tmp, 200)
    per_hop = (chain - local) / 3
    # The gRPC floor of this chain: each hop carries its activation one way and the 4 KB
    # output back; half an echo of each, measured the same way.
    manifest = Manifest.load(splits["mobilenet3"])
    hop_bytes = [sum(int(np.prod(t.shape)) * 4 for t in s.inputs) for s in manifest.shards]
    out_bytes = sum(int(np.prod(t.shape)) * 4 for t in manifest.outputs)
    floor = 0.0
    for nbytes in hop_bytes:
        floor += (await bare_grpc_round_trip(tmp, 50, nbytes)) / 2
        floor += (await bare_grpc_round_trip(tmp, 50, out_bytes)) / 2
    results["latency"] = {"local_s": local, "chain_s": chain, "ratio": chain / local,
                          "per_hop_overhead_ms": per_hop * 1000,
                          "bare_grpc_50kB_round_trip_ms": bare * 1000,
                          "hop_bytes": hop_bytes, "grpc_floor_ms": floor * 1000,
                          "overhead_above_grpc_floor_ms_per_hop":
                              (chain - local - floor) / 3 * 1000}

    # 2. throughput, 2 shards
    xs = [{k: rng.random(v.shape, dtype=np.float32) for k, v in x.items()}
          for _ in range(args.requests * 2)]
    agents = Agents(tmp, 2)
    try:
        await deploy(splits["mobilenet2"], agents.addresses, "m")
        one_process = local_throughput(splits["mobilenet2"], xs)
        pipelined = await chain_throughput(agents.addresses[0], xs)
    finally:
        agents.stop()
    results["throughput"] = {"one_process_rps": one_process, "two_agents_rps": pipelined,
                             "ratio": pipelined / one_process}

    # 3. bandwidth, 8 MiB activation, chunk sweep
    agents = Agents(tmp, 1)
    sweep = {}
    try:
        await deploy(splits["reducer"], agents.addresses, "r")
        from layerfleet.agent.client import AgentClient

        async with AgentClient(agents.addresses[0]) as c:
            await c.describe()
            t = time.perf_counter()
            for _ in range(20):
                await c.describe()
            small_rtt = (time.perf_counter() - t) / 20
        for chunk in (64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20):
            total, compute = await bandwidth(agents.addresses[0], chunk, 8)
            nbytes = 2048 * 1024 * 4
            sweep[chunk] = nbytes / max(total - compute - small_rtt, 1e-9)
    finally:
        agents.stop()
    results["bandwidth"] = {"activation_bytes": 8 << 20,
                            "by_chunk_bytes_Bps": {str(k): v for k, v in sweep.items()},
                            "default_chunk_bytes": 1 << 20,
                            "default_Bps": sweep[1 << 20]}

    lat, thr = results["latency"], results["throughput"]
    print("MobileNetV2 224x224, LiteRT 1 thread per shard\n")
    print(f"latency   3 agents {lat['chain_s'] * 1000:7.2f} ms   one process "
          f"{lat['local_s'] * 1000:7.2f} ms   ratio {lat['ratio']:.3f} (goal <= 1.15)")
    print(f"per-hop overhead {lat['per_hop_overhead_ms']:.3f} ms (goal <= 0.35); bare grpc.aio "
          f"50 KB round trip here {lat['bare_grpc_50kB_round_trip_ms']:.3f} ms")
    print(f"activations per hop {[f'{b / 1e3:.0f} kB' for b in lat['hop_bytes']]}: bare gRPC "
          f"moving them costs {lat['grpc_floor_ms']:.2f} ms; layerfleet adds "
          f"{lat['overhead_above_grpc_floor_ms_per_hop']:.3f} ms per hop above that")
    print(f"throughput 2 agents {thr['two_agents_rps']:6.1f}/s   one process "
          f"{thr['one_process_rps']:6.1f}/s   ratio {thr['ratio']:.2f} (goal >= 1.7)")
    print("hop bandwidth, 8 MiB activation:")
    for chunk, bps in sweep.items():
        print(f"  chunk {chunk >> 10:6d} KiB  {bps / 1e9:6.2f} GB/s")
    write("agent_latency", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
