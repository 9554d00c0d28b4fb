"""The agent's footprint: idle resident memory, start-to-SERVING time, idle CPU, and proof
that no TensorFlow is loaded. Measured beside a bare interpreter that imports only what
the agent must (numpy, grpc, zeroconf, ai_edge_litert): the floor.

    python bench/agent_footprint.py
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write  # noqa: E402

BIN = Path(sys.executable).parent
FLOOR = ("import numpy, grpc, zeroconf, psutil, ai_edge_litert.interpreter, time; "
         "print('ready', flush=True); time.sleep(60)")


async def _serving(address: str) -> None:
    from layerfleet.agent.client import wait_serving

    await wait_serving(address, timeout_s=30)


def start_agent(state: Path) -> tuple[subprocess.Popen, str, float]:
    started = time.perf_counter()
    process = subprocess.Popen([str(BIN / "layerfleet-agent"), "--listen", "127.0.0.1:0",
                                "--state-dir", str(state), "--no-mdns"],
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "serving on" in line:
            address = line.split("serving on ")[1].strip()
            break
    asyncio.run(_serving(address))
    return process, address, time.perf_counter() - started


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="footprint-"))
    starts = []
    for i in range(5):
        process, _, seconds = start_agent(tmp / f"s{i}")
        starts.append(seconds)
        process.send_signal(signal.SIGTERM)
        process.wait(20)

    process, address, _ = start_agent(tmp / "idle")
    floor = subprocess.Popen([sys.executable, "-c", FLOOR], stdout=subprocess.PIPE, text=True)
    floor.stdout.readline()
    time.sleep(5)
    agent_ps, floor_ps = psutil.Process(process.pid), psutil.Process(floor.pid)
    rss, floor_rss = agent_ps.memory_info().rss, floor_ps.memory_info().rss
    cpu_before = agent_ps.cpu_times()
    time.sleep(10)
    cpu_after = agent_ps.cpu_times()
    idle_cpu = ((cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)) / 10
    maps = Path(f"/proc/{process.pid}/maps").read_text()
    tf_libraries = sorted({line.split()[-1] for line in maps.splitlines()
                           if "tensorflow" in line.lower() and "/" in line})
    process.send_signal(signal.SIGTERM)
    process.wait(20)
    floor.kill()

    print(f"start to SERVING  median {statistics.median(starts) * 1000:6.0f} ms "
          f"(runs: {', '.join(f'{s * 1000:.0f}' for s in starts)}) goal <= 1000 ms")
    print(f"idle resident     {rss / 2**20:6.1f} MiB (floor: bare imports "
          f"{floor_rss / 2**20:.1f} MiB; agent/floor {rss / floor_rss:.2f}) goal <= 64 MB")
    print(f"idle CPU          {idle_cpu * 100:6.2f} % of one core over 10 s, goal <= 1 %")
    print(f"TensorFlow libraries mapped: {tf_libraries or 'none'}")
    write("agent_footprint", {
        "start_to_serving_s": starts, "start_to_serving_median_s": statistics.median(starts),
        "idle_rss_bytes": rss, "floor_rss_bytes": floor_rss, "idle_cpu_fraction": idle_cpu,
        "tensorflow_libraries": tf_libraries})


if __name__ == "__main__":
    main()
