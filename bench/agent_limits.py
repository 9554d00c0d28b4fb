"""An agent under senders that hold connections or stall halfway: it keeps serving, and its
memory comes back once they are cut off.

    python bench/agent_limits.py [--held 300] [--no-mdns]

One real agent process with its default settings (mDNS on unless --no-mdns), a small shard
deployed. Measured in one run:
1. idle resident memory after warm-up;
2. `--held` connections opened to its data port and left idle: how many it took, how many it
   told BUSY, whether a new client is still answered (and over which transport), and RSS;
3. stalled senders at once: an upload that declares 200 MiB and stops after 100 MiB, four
   gRPC requests that declare 48 MiB and stop after 24 MiB, three data-port frames that
   declare 96 MiB and stop after 48 MiB; requests from a well-behaved client meanwhile; the
   agent's peak RSS; and its RSS once every stalled sender was cut off (10 s without a
   byte), against idle (goal: within 10 %).
Writes bench/results/agent_limits.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import struct
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
MiB = 1 << 20


def start_agent(tmp: Path, mdns: bool) -> tuple[subprocess.Popen, str]:
    log = tmp / "agent.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "layerfleet-agent"), "--listen", "127.0.0.1:0", "--state-dir",
             str(tmp / "agent"), *([] if mdns else ["--no-mdns"])], stderr=out)
    while "serving on" not in log.read_text():
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.02)
    return process, log.read_text().split("serving on ")[1].split()[0]


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / MiB


def small_shard(tmp: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    from layerfleet.controller.partition import split_model
    from layerfleet.controller.partition.manifest import Manifest
    from layerfleet.controller.partition.tf import keras

    k = keras()
    inp = k.Input((16, 16, 3), name="image")
    out = k.layers.Dense(10, activation="softmax", name="probs")(
        k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(8, 3, name="c")(inp)))
    split_model(k.Model(inp, out), [], tmp / "split", cache_dir=tmp / "cache")
    manifest = Manifest.load(tmp / "split")
    x = {"image": np.zeros((1, 16, 16, 3), np.float32)}
    return manifest.shard_path(tmp / "split", 0).read_bytes(), x


async def serve_some(address: str, x: dict[str, np.ndarray], n: int) -> tuple[int, str]:
    from layerfleet.agent.client import AgentClient

    ok = 0
    async with AgentClient(address) as client:
        for _ in range(n):
            try:
                await client.infer("d", x, timeout_s=5)
                ok += 1
            except Exception:   # counted, not fatal: this is what the bench measures
                pass
        return ok, client.transport


def hold_connections(port: int, n: int) -> tuple[list[socket.socket], int]:
    """n connections that send the preface and then nothing; how many were told BUSY."""
    from layerfleet.agent import dataport

    held, busy = [], 0
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(dataport.PREFACE)
        s.settimeout(2)
        try:
            if s.recv(8) == dataport.BUSY:
                busy += 1
        except TimeoutError:
            pass
        held.append(s)
    return held, busy


async def stall_upload(address: str) -> None:
    from layerfleet.agent import transport
    from layerfleet.v1 import agent_pb2, agent_pb2_grpc

    async def chunks():
        yield agent_pb2.ShardChunk(sha256="0" * 64, size_bytes=200 * MiB)
        for _ in range(100):
            yield agent_pb2.ShardChunk(data=bytes(MiB))
        await asyncio.sleep(3600)

    async with transport.channel(address) as channel:
        try:
            await agent_pb2_grpc.AgentStub(channel).UploadShard(chunks(), timeout=60)
        except Exception:   # cut off: what we wait for
            pass


async def stall_requests(address: str) -> None:
    from layerfleet.agent import transport
    from layerfleet.v1 import agent_pb2, agent_pb2_grpc, tensor_pb2

    async def requests():
        for request_id in range(1, 5):
            for part in range(24):
                tensor = tensor_pb2.Tensor(name="image", data=bytes(MiB))
                if part == 0:
                    tensor.dtype, tensor.shape[:] = tensor_pb2.FLOAT32, [1, 12 * MiB]
                yield agent_pb2.InferRequest(request_id=request_id, deployment="d", more=True,
                                             tensors=[tensor])
        await asyncio.sleep(3600)

    async with transport.channel(address) as channel:
        call = agent_pb2_grpc.AgentStub(channel).Infer(requests())
        try:
            for _ in range(4):
                await asyncio.wait_for(call.read(), 60)
        except Exception:
            pass
        call.cancel()


def stall_frames(port: int) -> None:
    from layerfleet.agent import dataport
    from layerfleet.v1 import agent_pb2, tensor_pb2

    socks = []
    for request_id in range(1, 4):
        s = socket.create_connection(("127.0.0.1", port))
        header = agent_pb2.InferRequest(request_id=request_id, deployment="d", tensors=[
            tensor_pb2.Tensor(name="image", dtype=tensor_pb2.FLOAT32,
                              shape=[1, 24 * MiB])]).SerializeToString()
        s.sendall(dataport.PREFACE + struct.pack("<IQ", len(header), 96 * MiB) + header)
        for _ in range(48):
            s.sendall(bytes(MiB))
        socks.append(s)
    time.sleep(30)   # until the agent has cut them off
    for s in socks:
        s.close()


async def run(held_n: int, mdns: bool) -> dict:
    from layerfleet.agent.client import AgentClient, wait_serving

    tmp = Path(tempfile.mkdtemp())
    shard, x = small_shard(tmp)
    process, address = start_agent(tmp, mdns)
    results: dict = {"mdns": mdns}
    try:
        await wait_serving(address)
        async with AgentClient(address) as c:
            sha = await c.upload_shard(shard)
            await c.set_route(deployment="d", stage=0, shard_sha256=sha)
            info = await c.describe()
        assert hashlib.sha256(shard).hexdigest() == sha
        await serve_some(address, x, 200)
        await asyncio.sleep(3)
        idle = rss_mib(process.pid)
        results["idle_rss_mib"] = idle

        held, busy = await asyncio.to_thread(hold_connections, info.data_port, held_n)
        ok, transport = await serve_some(address, x, 50)
        results["held"] = {"opened": held_n, "told_busy": busy, "served_meanwhile": ok,
                           "of": 50, "transport_of_a_new_client": transport,
                           "rss_mib": rss_mib(process.pid)}
        for s in held:
            s.close()
        await asyncio.sleep(7)   # the agent gives memory back within 5 s of a burst
        results["held"]["rss_after_closed_mib"] = rss_mib(process.pid)

        peak = rss_mib(process.pid)
        frames = asyncio.create_task(asyncio.to_thread(stall_frames, info.data_port))
        stalls = [asyncio.create_task(stall_upload(address)),
                  asyncio.create_task(stall_requests(address))]
        served = 0
        started = time.monotonic()
        while time.monotonic() - started < 8:   # before the cut-off (10 s without a byte)
            ok, _ = await serve_some(address, x, 10)
            served += ok
            peak = max(peak, rss_mib(process.pid))
            await asyncio.sleep(0.2)
        await asyncio.gather(*stalls)
        while not frames.done():
            peak = max(peak, rss_mib(process.pid))
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        after = rss_mib(process.pid)
        ok, _ = await serve_some(address, x, 50)
        results["stalled"] = {"peak_rss_mib": peak, "rss_after_cut_off_mib": after,
                              "after_over_idle": after / idle, "served_meanwhile": served,
                              "served_after": ok, "of_after": 50}
    finally:
        process.terminate()
        process.wait(20)
    return results


def report(r: dict) -> None:
    h, s = r["held"], r["stalled"]
    print(f"\nidle RSS {r['idle_rss_mib']:.1f} MiB (mDNS {'on' if r['mdns'] else 'off'})")
    print(f"{h['opened']} held connections: {h['told_busy']} told BUSY; a new client was "
          f"answered {h['served_meanwhile']}/{h['of']} over {h['transport_of_a_new_client']}; "
          f"RSS {h['rss_mib']:.1f} MiB, {h['rss_after_closed_mib']:.1f} MiB once closed")
    print(f"stalled senders: peak RSS {s['peak_rss_mib']:.1f} MiB, after the cut-off "
          f"{s['rss_after_cut_off_mib']:.1f} MiB = {s['after_over_idle']:.2f}x idle (goal "
          f"<= 1.10); served {s['served_meanwhile']} requests meanwhile, "
          f"{s['served_after']}/{s['of_after']} after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=300)
    parser.add_argument("--no-mdns", action="store_true")
    args = parser.parse_args()
    r = asyncio.run(run(args.held, not args.no_mdns))
    report(r)
    write("agent_limits", r)


if __name__ == "__main__":
    main()
