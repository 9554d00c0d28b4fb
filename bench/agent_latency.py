"""How thin the agent is, measured side by side in one run (ratios, not absolute times).

    python bench/agent_latency.py [--requests 60] [--rounds 3]

Every figure comes from this run; the variants are measured in interleaved rounds so the
machine's noise hits them alike. Agents are real processes on loopback, one LiteRT thread
per shard; "dataport" is the agents' raw-TCP data port (the default), "grpc" the same
agents started with --data-port off (activations over gRPC Infer, 1 MiB chunks).

1. Latency: MobileNetV2 224x224 in 3 shards over 3 agents / the same shards back to back
   in this process. Per-hop overhead = (chain - one process) / 3: each agent adds one
   request hop and one answer hop. Floors for the same bytes: a plain blocking socket
   between two processes carrying each hop's activation and a 4 kB answer (what the
   kernel charges), a bare grpc.aio echo of 50 kB (the issue's reference), and the
   "Python floor": the same 3 shards in 3 featureless Python relays (blocking sockets,
   length-prefixed raw bytes, shard run inline, answer relayed back), measured in the same
   rounds: the least any Python agent could add on this machine.
2. Throughput: the model in 2 shards over 2 agents / the same 2 shards back to back in
   one thread, with 8 requests in flight (and a sweep of 2-16 over the data port). Ceiling on
   this machine: the two shards in two threads of one process with no transport at all.
3. Bandwidth: one 8 MiB activation to an agent running a shard that reduces it to 4 kB;
   bytes / (round trip - compute - small round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write

BIN = Path(sys.executable).parent
ANSWER_BYTES = 4096
TRANSPORTS = ("dataport", "grpc")
IN_FLIGHT_SWEEP = (2, 4, 16)


# -- setup ---------------------------------------------------------------------------


def build_splits(tmp: Path) -> dict[str, Path]:
    from layerfleet.controller.partition import Analysis, balanced_cuts, load_model, split_model
    from layerfleet.controller.partition.tf import keras

    cache = Path(os.environ.get("LAYERFLEET_CACHE", tmp / "cache"))
    model = load_model("MobileNetV2", input_shape=(224, 224, 3))
    analysis = Analysis(model)
    out = {}
    for n in (2, 3):
        out[f"mobilenet{n}"] = tmp / f"mobilenet{n}"
        split_model(model, balanced_cuts(analysis.profile, n), out[f"mobilenet{n}"],
                    cache_dir=cache, analysis=analysis)
    k = keras()
    inp = k.Input((2048, 1024), name="big")
    reducer = k.Model(inp, k.layers.GlobalAveragePooling1D(name="mean")(inp), name="reducer")
    out["reducer"] = tmp / "reducer"
    split_model(reducer, [], out["reducer"], cache_dir=cache)
    return out


class Agents:
    """n `layerfleet-agent` processes on loopback."""

    def __init__(self, tmp: Path, n: int, *extra: str) -> None:
        self.procs: list[subprocess.Popen] = []
        self.addresses: list[str] = []
        for i in range(n):
            p = subprocess.Popen([str(BIN / "layerfleet-agent"), "--listen", "127.0.0.1:0",
                                  "--state-dir", str(tmp / f"agent-{i}-{time.time_ns()}"),
                                  "--no-mdns", "--threads", "1", *extra],
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


def start_agents(tmp: Path, n: int) -> dict[str, Agents]:
    return {"dataport": Agents(tmp, n), "grpc": Agents(tmp, n, "--data-port", "off")}


async def deploy(directory: Path, addresses: list[str], name: str) -> None:
    from layerfleet.agent.client import AgentClient
    from layerfleet.controller.partition.manifest import Manifest

    manifest = Manifest.load(directory)
    for i in reversed(range(len(addresses))):
        async with AgentClient(addresses[i]) as c:
            sha = await c.upload_shard(manifest.shard_path(directory, i).read_bytes())
            await c.set_route(deployment=name, stage=i, shard_sha256=sha,
                              next_hops=addresses[i + 1:i + 2])


def clients(agents: dict[str, Agents]):
    from layerfleet.agent.client import AgentClient

    return {kind: AgentClient(a.addresses[0], use_data_port=kind == "dataport")
            for kind, a in agents.items()}


# -- floors and ceilings ---------------------------------------------------------------

SOCKET_PEER = r"""
import socket, struct
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = memoryview(bytearray(64 << 20)); answer = bytes(ANSWER_BYTES)
while len(head := conn.recv(8, socket.MSG_WAITALL)) == 8:
    n, got = struct.unpack("<Q", head)[0], 0
    while got < n:
        got += conn.recv_into(buf[got:n])
    conn.sendall(answer)
""".replace("ANSWER_BYTES", str(ANSWER_BYTES))


def socket_floor(sizes: list[int], runs: int) -> list[float]:
    """Seconds to send each size to another process over a blocking socket and get a 4 kB
    answer back (fresh arrays, as activations are): the kernel's share of a hop."""
    import socket

    peer = subprocess.Popen([sys.executable, "-c", SOCKET_PEER], stdout=subprocess.PIPE,
                            text=True)
    try:
        sock = socket.create_connection(("127.0.0.1", int(peer.stdout.readline())))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rng = np.random.default_rng(0)
        out = []
        for size in sizes:
            arrays = [rng.integers(0, 255, size, dtype=np.uint8) for _ in range(8)]
            times = []
            for i in range(runs + 5):
                t = time.perf_counter()
                sock.sendall(struct.pack("<Q", size))
                sock.sendall(arrays[i % len(arrays)])
                sock.recv(ANSWER_BYTES, socket.MSG_WAITALL)
                times.append(time.perf_counter() - t)
            out.append(statistics.median(times[5:]))
        sock.close()
        return out
    finally:
        peer.kill()


PYTHON_RELAY = r"""
import socket, struct, sys
import numpy as np
from layerfleet.agent.runtime import ShardRunner
shard, next_port = sys.argv[1], int(sys.argv[2])
runner = ShardRunner(shard, num_threads=1)
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
print(listener.getsockname()[1], flush=True)
down = socket.create_connection(("127.0.0.1", next_port)) if next_port else None
up, _ = listener.accept()
for s in (up, down):
    if s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

def fill(sock, view):
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n: raise SystemExit
        got += n

def answer_from(sock):
    head = bytearray(8); fill(sock, memoryview(head))
    body = bytearray(struct.unpack("<Q", head)[0]); fill(sock, memoryview(body))
    return head + body

while True:
    fill(up, memoryview(bytearray(8)))
    inputs = {c.name: np.empty(c.shape, c.dtype)
              for c in sorted(runner.inputs, key=lambda c: c.name)}
    for a in inputs.values():
        fill(up, memoryview(a.reshape(-1).view(np.uint8)))
    outputs = [a for _, a in sorted(runner.run(inputs).items())]
    if down is None:
        answer = b"".join(a.tobytes() for a in outputs)
        up.sendall(struct.pack("<Q", len(answer)) + answer)
        continue
    down.sendall(struct.pack("<Q", sum(a.nbytes for a in outputs)))
    for a in outputs:
        down.sendall(a)
    up.sendall(answer_from(down))
"""


class PythonChain:
    """The Python floor: the split's shards in featureless relay processes (see above)."""

    def __init__(self, directory: Path) -> None:
        from layerfleet.controller.partition.manifest import Manifest

        manifest = Manifest.load(directory)
        self.procs: list[subprocess.Popen] = []
        port = 0
        for i in reversed(range(len(manifest.shards))):
            p = subprocess.Popen([sys.executable, "-c", PYTHON_RELAY,
                                  str(manifest.shard_path(directory, i)), str(port)],
                                 stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            port = int(p.stdout.readline())
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def infer(self, x: dict[str, np.ndarray]) -> None:
        import socket

        arrays = [a for _, a in sorted(x.items())]
        self.sock.sendall(struct.pack("<Q", sum(a.nbytes for a in arrays)))
        for a in arrays:
            self.sock.sendall(a)
        (size,) = struct.unpack("<Q", self.sock.recv(8, socket.MSG_WAITALL))
        assert len(self.sock.recv(size, socket.MSG_WAITALL)) == size

    def latencies(self, x: dict[str, np.ndarray], runs: int) -> list[float]:
        return timed(lambda: self.infer(x), runs)

    def stop(self) -> None:
        self.sock.close()
        for p in self.procs:
            p.kill()
            p.wait()


async def grpc_echo(address: str, runs: int, size: int = 50_000) -> float:
    """A bare grpc.aio bidirectional round trip of `size` bytes to an agent's Echo."""
    import grpc
    from layerfleet.v1 import agent_pb2, agent_pb2_grpc

    payload = agent_pb2.Blob(data=bytes(size))
    async with grpc.aio.insecure_channel(address) as ch:
        call = agent_pb2_grpc.AgentStub(ch).Echo()
        times = []
        for _ in range(runs + 5):
            t = time.perf_counter()
            await call.write(payload)
            await call.read()
            times.append(time.perf_counter() - t)
        await call.done_writing()
    return statistics.median(times[5:])


def two_thread_ceiling(directory: Path, xs: list[dict]) -> float:
    """Requests/s of the two shards in two threads of one process, no transport: the best
    any two-stage pipeline can do on this machine (the slower stage sets the pace)."""
    from layerfleet.agent.runtime import ShardRunner
    from layerfleet.controller.partition.manifest import Manifest

    manifest = Manifest.load(directory)
    runners = [ShardRunner(manifest.shard_path(directory, i), num_threads=1) for i in range(2)]
    mids = [runners[0].run(x) for x in xs[:8]]
    stage_inputs = [xs, [{t.name: m[t.name] for t in runners[1].inputs} for m in mids]]
    rates: list[float] = [0.0, 0.0]

    def loop(i: int) -> None:
        inputs = stage_inputs[i]
        started = time.perf_counter()
        for k in range(len(xs)):
            runners[i].run(inputs[k % len(inputs)])
        rates[i] = len(xs) / (time.perf_counter() - started)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return min(rates)


# -- the measurements ------------------------------------------------------------------


def timed(call: Callable[[], object], runs: int) -> list[float]:
    """Seconds per call, after one call to warm up."""
    call()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


def local_latencies(directory: Path, x: dict, runs: int) -> list[float]:
    from layerfleet.controller.partition.local import LocalPipeline

    pipe = LocalPipeline(directory, num_threads=1)
    return timed(lambda: pipe.run(x), runs)


async def chain_latencies(client, x: dict, runs: int) -> list[float]:
    await client.infer("m", x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        await client.infer("m", x)
        times.append(time.perf_counter() - t)
    return times


def local_throughput(directory: Path, xs: list[dict]) -> float:
    from layerfleet.controller.partition.local import LocalPipeline

    pipe = LocalPipeline(directory, num_threads=1)
    pipe.run(xs[0])
    t = time.perf_counter()
    for x in xs:
        pipe.run(x)
    return len(xs) / (time.perf_counter() - t)


def cpu_seconds(pids: list[int]) -> list[float]:
    import psutil

    return [sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids]


async def chain_throughput(client, xs: list[dict], in_flight: int = 8) -> float:
    await client.infer("m", xs[0])
    sem = asyncio.Semaphore(in_flight)

    async def one(x: dict) -> None:
        async with sem:
            await client.infer("m", x)

    t = time.perf_counter()
    await asyncio.gather(*(one(x) for x in xs))
    return len(xs) / (time.perf_counter() - t)


async def bandwidth(address: str, use_data_port: bool, chunk_bytes: int, runs: int) -> float:
    from layerfleet.agent.client import AgentClient
    from layerfleet.agent.stream import InferStream

    big = {"big": np.random.default_rng(0).random((1, 2048, 1024), dtype=np.float32)}
    async with AgentClient(address) as c:   # a small round trip, to subtract
        await c.describe()
        t = time.perf_counter()
        for _ in range(20):
            await c.describe()
        small_rtt = (time.perf_counter() - t) / 20
    stream = InferStream(address, chunk_bytes=chunk_bytes, use_data_port=use_data_port)
    try:
        await stream.infer("r", 0, big)
        times, computes = [], []
        for _ in range(runs):
            t = time.perf_counter()
            reply = await stream.infer("r", 0, big)
            times.append(time.perf_counter() - t)
            computes.append(reply.hops[0].compute_s + reply.hops[0].queue_s)
        seconds = statistics.median(times) - statistics.median(computes) - small_rtt
        return big["big"].nbytes / max(seconds, 1e-9)
    finally:
        await stream.close()


def _median(values: list[float]) -> float:
    return statistics.median(values)


async def run(args: argparse.Namespace) -> None:
    from layerfleet.controller.partition.manifest import Manifest

    tmp = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    splits = build_splits(tmp)
    rng = np.random.default_rng(0)
    manifest = Manifest.load(splits["mobilenet3"])
    x = {manifest.inputs[0].name: rng.random((1, 224, 224, 3), dtype=np.float32)}
    results: dict = {"rounds": args.rounds, "requests_per_round": args.requests}

    # 1. latency, 3 shards
    agents = start_agents(tmp, 3)
    python_chain = PythonChain(splits["mobilenet3"])
    local: list[float] = []
    chain: dict[str, list[float]] = {k: [] for k in ("python_floor", *TRANSPORTS)}
    try:
        for a in agents.values():
            await deploy(splits["mobilenet3"], a.addresses, "m")
        cs = clients(agents)
        for _ in range(args.rounds):
            local += local_latencies(splits["mobilenet3"], x, args.requests)
            chain["python_floor"] += python_chain.latencies(x, args.requests)
            for kind in TRANSPORTS:
                chain[kind] += await chain_latencies(cs[kind], x, args.requests)
        assert [c.transport for c in cs.values()] == list(TRANSPORTS)
        for c in cs.values():
            await c.close()
        echo_50k = await grpc_echo(agents["dataport"].addresses[0], 200)
    finally:
        python_chain.stop()
        for a in agents.values():
            a.stop()
    hop_bytes = [sum(int(np.prod(t.shape)) * 4 for t in s.inputs) for s in manifest.shards]
    floor = socket_floor(hop_bytes, 100)
    local_s = _median(local)
    results["latency"] = {
        "one_process_s": local_s, "hop_bytes": hop_bytes,
        "socket_floor_per_hop_ms": [f * 1000 for f in floor],
        "bare_grpc_50kB_round_trip_ms": echo_50k * 1000,
        **{kind: {"chain_s": _median(chain[kind]), "ratio": _median(chain[kind]) / local_s,
                  "per_hop_overhead_ms": (_median(chain[kind]) - local_s) / 3 * 1000}
           for kind in chain}}

    # 2. throughput, 2 shards
    xs = [{k: rng.random(v.shape, dtype=np.float32) for k, v in x.items()}
          for _ in range(args.requests * 2)]
    agents = start_agents(tmp, 2)
    rates: dict[str, list[float]] = {k: [] for k in ("one_process", "ceiling", *TRANSPORTS)}
    window: dict[int, list[float]] = {n: [] for n in IN_FLIGHT_SWEEP}
    cpu: dict[str, list[list[float]]] = {k: [] for k in TRANSPORTS}
    try:
        for a in agents.values():
            await deploy(splits["mobilenet2"], a.addresses, "m")
        cs = clients(agents)
        for _ in range(args.rounds):
            rates["one_process"].append(local_throughput(splits["mobilenet2"], xs))
            rates["ceiling"].append(two_thread_ceiling(splits["mobilenet2"], xs))
            for kind in TRANSPORTS:
                pids = [p.pid for p in agents[kind].procs] + [os.getpid()]
                before = cpu_seconds(pids)
                rates[kind].append(await chain_throughput(cs[kind], xs))
                used = [a - b for a, b in zip(cpu_seconds(pids), before)]
                cpu[kind].append([u / (len(xs) + 1) for u in used])
            for n in IN_FLIGHT_SWEEP:
                window[n].append(await chain_throughput(cs["dataport"], xs, n))
        for c in cs.values():
            await c.close()
    finally:
        for a in agents.values():
            a.stop()
    one = _median(rates["one_process"])
    results["throughput"] = {f"{k}_rps": _median(v) for k, v in rates.items()}
    results["throughput"].update({f"{k}_ratio": _median(v) / one for k, v in rates.items()
                                  if k != "one_process"})
    results["throughput"]["in_flight"] = 8
    results["throughput"]["dataport_ratio_by_in_flight"] = {str(n): _median(v) / one
                                                        for n, v in window.items()}
    # CPU seconds per request in each process: the cores / their sum bounds the rate.
    results["throughput"]["cpu_ms_per_request"] = {
        kind: {who: _median([r[i] for r in rows]) * 1000
               for i, who in enumerate(("agent_1", "agent_2", "client"))}
        for kind, rows in cpu.items()}
    cores = os.cpu_count() or 1
    results["throughput"].update({
        f"{kind}_cpu_bound_ratio": cores * 1000 / sum(ms.values()) / one
        for kind, ms in results["throughput"]["cpu_ms_per_request"].items()})

    # 3. bandwidth, 8 MiB activation
    agents = start_agents(tmp, 1)
    sweep: dict[str, float] = {}
    try:
        for a in agents.values():
            await deploy(splits["reducer"], a.addresses, "r")
        for _ in range(args.rounds):
            sweep.setdefault("dataport", [])
            sweep["dataport"].append(await bandwidth(agents["dataport"].addresses[0], True, 0, 8))
            for chunk in (256 << 10, 1 << 20, 4 << 20):
                sweep.setdefault(f"grpc_chunk_{chunk >> 10}KiB", []).append(
                    await bandwidth(agents["grpc"].addresses[0], False, chunk, 8))
    finally:
        for a in agents.values():
            a.stop()
    results["bandwidth"] = {"activation_bytes": 8 << 20,
                            "Bps": {k: _median(v) for k, v in sweep.items()}}
    report(results)
    write("agent_latency", results)


def report(results: dict) -> None:
    lat, thr, bw = results["latency"], results["throughput"], results["bandwidth"]["Bps"]
    floor = lat["socket_floor_per_hop_ms"]
    row: Callable[..., None] = lambda *cells: print("  ".join(f"{c:>16}" for c in cells))
    print(f"MobileNetV2 224x224, LiteRT 1 thread per shard, {results['rounds']} rounds x "
          f"{results['requests_per_round']} requests\n")
    print(f"latency, 3 shards: one process {lat['one_process_s'] * 1000:.2f} ms; activations "
          f"per hop {[f'{b / 1e3:.0f} kB' for b in lat['hop_bytes']]}")
    row("", "chain ms", "/ one process", "per hop ms")
    for kind in ("python_floor", *TRANSPORTS):
        k = lat[kind]
        row(kind, f"{k['chain_s'] * 1000:.2f}", f"{k['ratio']:.3f}",
            f"{k['per_hop_overhead_ms']:.3f}")
    print("python_floor = the same shards in 3 featureless Python relays (blocking sockets, "
          "raw bytes, shard inline): the least a Python agent adds here")
    print(f"goals: ratio <= 1.15, per hop <= 0.35 ms. Floors: a blocking socket between two "
          f"processes moves these hops (+4 kB back) in {', '.join(f'{f:.3f}' for f in floor)} "
          f"ms (mean {statistics.mean(floor):.3f}); bare grpc.aio 50 kB round trip "
          f"{lat['bare_grpc_50kB_round_trip_ms']:.3f} ms\n")
    print(f"throughput, 2 shards, {thr['in_flight']} in flight: one process "
          f"{thr['one_process_rps']:.1f}/s")
    row("", "requests/s", "/ one process")
    for kind in ("ceiling", *TRANSPORTS):
        row(kind, f"{thr[f'{kind}_rps']:.1f}", f"{thr[f'{kind}_ratio']:.2f}")
    sweep = ", ".join(f"{n}: {r:.2f}" for n, r in thr["dataport_ratio_by_in_flight"].items())
    print(f"goal >= 1.7; ceiling = the two shards in two threads of one process, no "
          f"transport. Data-port ratio by requests in flight: {sweep}")
    for kind in TRANSPORTS:
        ms = thr["cpu_ms_per_request"][kind]
        print(f"CPU per request over {kind}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in
                                                       ms.items())
              + f"; {os.cpu_count()} cores / their sum = {thr[f'{kind}_cpu_bound_ratio']:.2f}"
              " x one process (the most this CPU cost allows)")
    print()
    print("hop bandwidth, 8 MiB activation (goal >= 1 GB/s):")
    for kind, bps in bw.items():
        print(f"  {kind:<20} {bps / 1e9:6.2f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
