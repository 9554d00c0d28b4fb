"""The agent's footprint with the settings users run (mDNS on) and with `--no-mdns` beside
it, in one run: idle resident memory, start-to-SERVING time, idle CPU, threads, and proof
that no TensorFlow is loaded. Also a default agent after one Benchmark, as a controller
calibrates every agent it finds (that loads LiteRT). A bare interpreter that imports only what the agent must
(numpy, grpc, zeroconf, psutil, ai_edge_litert) runs beside them: the floor.

    python bench/agent_footprint.py               # the table, and results/agent_footprint.json
    python bench/agent_footprint.py --breakdown   # also: where the idle memory goes

Both agents run at the same time (starts alternate which goes first), so a busy machine
shifts both alike; compare the ratio, not a figure from another run.
"""

from __future__ import annotations

import argparse
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

from _common import write

BIN = Path(sys.executable).parent
FLOOR = ("import numpy, grpc, zeroconf, psutil, ai_edge_litert.interpreter, time; "
         "print('ready', flush=True); time.sleep(60)")
# The default configuration first; everything else is measured beside it, never instead.
CONFIGS = {"default (mDNS on)": [], "--no-mdns": ["--no-mdns"]}
CALIBRATED = "default, calibrated"
STARTS = 5
SETTLE_S = 5.0
CPU_WINDOW_S = 30.0   # zeroconf answers queries now and then: a short window catches a burst


async def _serving(address: str) -> None:
    from layerfleet.agent.client import wait_serving

    await wait_serving(address, timeout_s=30)


def start_agent(state: Path, extra: list[str]) -> tuple[subprocess.Popen, str, float]:
    """An agent as users start it (default listen host, a free port), and the seconds from
    exec to a SERVING health answer."""
    started = time.perf_counter()
    process = subprocess.Popen([str(BIN / "layerfleet-agent"), "--listen", "127.0.0.1:0",
                                "--state-dir", str(state), *extra],
                               stderr=subprocess.PIPE, text=True)
    address = ""
    for line in process.stderr:
        if "serving on" in line:
            address = line.split("serving on ")[1].strip()
            break
    if not address:
        raise SystemExit(f"agent {extra} exited before serving (exit {process.wait()})")
    asyncio.run(_serving(address))
    return process, address, time.perf_counter() - started


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(20)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def litert_loaded(pid: int) -> bool:
    return "litert" in Path(f"/proc/{pid}/maps").read_text()


async def _calibrate(address: str) -> None:
    from layerfleet.agent.client import AgentClient

    async with AgentClient(address) as client:
        await client.benchmark(runs=5)


def tensorflow_libraries(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if "tensorflow" in line.lower() and "/" in line})


def measure(tmp: Path) -> dict[str, dict]:
    names = list(CONFIGS)
    starts: dict[str, list[float]] = {name: [] for name in names}
    for i in range(STARTS):
        for name in (names if i % 2 == 0 else names[::-1]):
            process, _, seconds = start_agent(tmp / f"start-{i}-{len(starts[name])}",
                                              CONFIGS[name])
            starts[name].append(seconds)
            stop(process)

    running = {name: start_agent(tmp / f"idle-{n}", CONFIGS[name])[0]
               for n, name in enumerate(names)}
    # What a controller does when it finds or admits an agent: one Benchmark (calibration),
    # which loads LiteRT; an agent serving shards holds it (and their interpreters) too.
    running[CALIBRATED], address, _ = start_agent(tmp / "calibrated", CONFIGS[names[0]])
    asyncio.run(_calibrate(address))
    floor = subprocess.Popen([sys.executable, "-c", FLOOR], stdout=subprocess.PIPE, text=True)
    floor.stdout.readline()
    time.sleep(SETTLE_S)
    procs = {name: psutil.Process(p.pid) for name, p in running.items()}
    procs["floor"] = psutil.Process(floor.pid)
    memory = {name: p.memory_full_info() for name, p in procs.items()}
    cpu_before = {name: cpu_seconds(p) for name, p in procs.items()}
    time.sleep(CPU_WINDOW_S)
    cpu = {name: (cpu_seconds(p) - cpu_before[name]) / CPU_WINDOW_S for name, p in procs.items()}
    threads = {name: sorted(t.read_text().strip() for t in
                            Path(f"/proc/{p.pid}/task").glob("*/comm"))
               for name, p in procs.items()}
    result = {}
    for name in [*names, CALIBRATED]:
        result[name] = {
            "idle_rss_bytes": memory[name].rss, "idle_uss_bytes": memory[name].uss,
            "idle_cpu_fraction": cpu[name], "threads": threads[name],
            "litert_loaded": litert_loaded(procs[name].pid),
            "tensorflow_libraries": tensorflow_libraries(procs[name].pid)}
        if name in starts:
            result[name]["start_to_serving_s"] = starts[name]
            result[name]["start_to_serving_median_s"] = statistics.median(starts[name])
    result["floor"] = {"idle_rss_bytes": memory["floor"].rss,
                       "idle_uss_bytes": memory["floor"].uss}
    for process in running.values():
        stop(process)
    floor.kill()
    return result


# What an idle agent has loaded, step by step, each in the order the agent meets it.
BREAKDOWN = """
import gc, sys, psutil
p = psutil.Process()
def mib():
    gc.collect()
    return p.memory_info().rss / 2**20
steps = [("interpreter + psutil", "")]
for label, code in [
    ("numpy", "import numpy"),
    ("grpc + protobuf", "import grpc, grpc.aio"),
    ("health, reflection, protos", "import grpc_health.v1.health, "
     "grpc_reflection.v1alpha.reflection, layerfleet.v1.agent_pb2"),
    ("layerfleet.agent.main", "import layerfleet.agent.main"),
    ("zeroconf (import)", "import zeroconf.asyncio, layerfleet.agent.discovery"),
    ("LiteRT interpreter (import)", "import ai_edge_litert.interpreter"),
]:
    before = mib()
    exec(code)
    print(f"{label}\\t{mib() - before:.1f}")
print(f"total\\t{mib():.1f}")
print("modules\\t" + " ".join(sorted(m for m in ("ai_edge_litert", "zeroconf") if m in sys.modules)))
"""


def breakdown() -> None:
    print("\nwhere the memory goes (RSS added by each import, fresh interpreter):")
    out = subprocess.run([sys.executable, "-c", BREAKDOWN], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines()[:-1]:
        label, mib = line.split("\t")
        print(f"  {label:32s} {'+' if label != 'total' else ' '}{float(mib):5.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--breakdown", action="store_true",
                        help="Also print the RSS each import adds.")
    args = parser.parse_args()
    result = measure(Path(tempfile.mkdtemp(prefix="footprint-")))
    default, bare = (result[name] for name in CONFIGS)
    floor = result["floor"]
    names = list(CONFIGS)
    width = max(len(n) for n in names) + 2
    print(f"{'':18s}" + "".join(f"{n:>{width}s}" for n in names) + "   ratio   goal")
    rows = [
        ("start to SERVING", "start_to_serving_median_s", 1000, "ms", "<= 1000 ms"),
        ("idle resident", "idle_rss_bytes", 2**-20, "MiB", "<= 64 MB (61.0 MiB)"),
        ("idle unique (USS)", "idle_uss_bytes", 2**-20, "MiB", ""),
        ("idle CPU", "idle_cpu_fraction", 100, "%", f"<= 1 % of a core (over {CPU_WINDOW_S:.0f} s)"),
    ]
    for label, key, scale, unit, goal in rows:
        cells = "".join(f"{result[n][key] * scale:>{width - 4}.1f} {unit:3s}"
                        for n in names)
        ratio = f"{default[key] / bare[key]:5.2f}" if bare[key] else "    -"
        print(f"{label:18s}{cells}   {ratio}   {goal}")
    print(f"{'threads':18s}" + "".join(f"{len(result[n]['threads']):>{width - 4}d}    "
                                        for n in names))
    print(f"floor (bare imports: numpy, grpc, zeroconf, psutil, LiteRT): "
          f"{floor['idle_rss_bytes'] / 2**20:.1f} MiB resident; default/floor "
          f"{default['idle_rss_bytes'] / floor['idle_rss_bytes']:.2f}")
    print("starts (ms): " + "; ".join(
        f"{n}: {', '.join(f'{s * 1000:.0f}' for s in result[n]['start_to_serving_s'])}"
        for n in names))
    calibrated = result[CALIBRATED]
    print(f"default after one Benchmark (as a controller calibrates an agent it finds): "
          f"{calibrated['idle_rss_bytes'] / 2**20:.1f} MiB resident, idle CPU "
          f"{calibrated['idle_cpu_fraction'] * 100:.1f} %")
    print("LiteRT loaded: " + "; ".join(f"{n}: {'yes' if result[n]['litert_loaded'] else 'no'}"
                                        for n in [*names, CALIBRATED]))
    print(f"threads of the default agent: {', '.join(default['threads'])}")
    print("TensorFlow libraries mapped: " + "; ".join(
        f"{n}: {result[n]['tensorflow_libraries'] or 'none'}" for n in names))
    if args.breakdown:
        breakdown()
    write("agent_footprint", {"configs": {n: result[n] for n in [*names, CALIBRATED]},
                              "floor": floor,
                              "default_over_no_mdns_rss": default["idle_rss_bytes"]
                              / bare["idle_rss_bytes"]})


if __name__ == "__main__":
    main()
