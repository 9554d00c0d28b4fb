"""10,000 simulated agents heartbeating into a real controller while its API is timed
(fleet_scale_bench.py agents).

The controller runs as users run it (`layerfleet-controller serve`: mDNS on, heartbeat 2 s,
re-planning on) in its own process; one real agent serves a deployed digits CNN. The
simulated agents are asyncio clients of the real Fleet service, several hundred per process,
each with its own channel (one TCP connection, as a real agent has): Join once, then a
Heartbeat with a telemetry sample every interval the controller gave, at a random phase.
Their addresses are on 127.77.0.0/16 port 9, where nothing listens, so the controller's
calibration of them fails fast and they stay uncalibrated.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

P99_GOAL_S = 0.050
# Joins spread over this long (each one writes its row and an event, synchronously): a
# fleet powering up together, not 10,000 agents in the same second.
JOIN_SPREAD_S = 60.0
LIST_GOAL_S = 1.0


def _simulated(index: int, count: int, first: int, controller: str, token: str,
               seconds: float, out: Any) -> None:
    """One process: `count` agents, ids first..first+count-1, for `seconds` after joining."""
    import grpc
    from layerfleet.v1 import agent_pb2, fleet_pb2, fleet_pb2_grpc

    async def agent(i: int, stats: dict[str, int], stop_at: list[float]) -> None:
        device_id = f"sim-{i:05d}"
        channel = grpc.aio.insecure_channel(controller)
        stub = fleet_pb2_grpc.FleetStub(channel)
        info = agent_pb2.DeviceInfo(device_id=device_id, hostname=device_id, arch="aarch64",
                                    cores=4, memory_bytes=4 << 30, runtime="simulated",
                                    version="bench", board="simulated Raspberry Pi 4")
        address = f"127.77.{i // 250}.{i % 250 + 1}:9"
        try:
            await asyncio.sleep(random.uniform(0, JOIN_SPREAD_S))
            reply = await stub.Join(fleet_pb2.JoinRequest(token=token, device=info,
                                                          address=address), timeout=60)
            stats["joined"] += 1
            interval = reply.heartbeat_interval_s or 2.0
            await asyncio.sleep(random.uniform(0, interval))
            while time.monotonic() < stop_at[0]:
                started = time.monotonic()
                sample = agent_pb2.TelemetrySample(
                    time=time.time(), cpu_percent_per_core=[random.uniform(0, 100)] * 4,
                    memory_total=4 << 30, memory_available=3 << 30, power_w=3.1,
                    energy_method="model:raspberry-pi-4")
                try:
                    beat = await stub.Heartbeat(fleet_pb2.HeartbeatRequest(
                        device_id=device_id, token=token, sample=sample), timeout=10)
                    stats["beats"] += 1
                    stats["unknown"] += not beat.known
                except grpc.aio.AioRpcError:
                    stats["failed"] += 1
                late = time.monotonic() - started
                await asyncio.sleep(max(0.0, interval - late))
        except grpc.aio.AioRpcError:
            stats["join_failed"] += 1
        finally:
            await channel.close()

    async def run() -> dict[str, int]:
        stats = {"joined": 0, "beats": 0, "unknown": 0, "failed": 0, "join_failed": 0}
        stop_at = [time.monotonic() + JOIN_SPREAD_S + 5 + seconds]
        await asyncio.gather(*(agent(i, stats, stop_at) for i in range(first, first + count)))
        return stats

    out.put((index, asyncio.run(run())))


def _controller_usage(pid: int) -> tuple[float, int]:
    import psutil

    p = psutil.Process(pid)
    t = p.cpu_times()
    return t.user + t.system, p.memory_info().rss


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def bench_agents(n_agents: int, processes: int, seconds: float) -> dict:
    import numpy as np
    from layerfleet.controller.client import ControllerClient
    from layerfleet.controller.demo import _bin, _start, _stop, _wait_for_devices, train_digits_cnn
    from layerfleet.v1 import controller_pb2

    work = Path(tempfile.mkdtemp(prefix="fleet-agents-"))
    state = work / "controller"
    import subprocess

    token = subprocess.run([_bin("layerfleet-controller"), "token", "create", "--state-dir",
                            str(state)], check=True, capture_output=True, text=True
                           ).stdout.strip()
    daemons = []
    try:
        controller = _start("controller", [_bin("layerfleet-controller"), "serve", "--listen",
                                           "127.0.0.1:0", "--state-dir", str(state)],
                            work / "controller.log")
        daemons.append(controller)
        daemons.append(_start("agent", [_bin("layerfleet-agent"), "--listen", "127.0.0.1:0",
                                        "--state-dir", str(work / "agent"), "--threads", "1",
                                        "--controller", controller.address, "--join-token",
                                        token], work / "agent.log"))
        client = ControllerClient(controller.address, timeout_s=120)
        _wait_for_devices(client, 1)
        x, _, _ = train_digits_cnn(work / "digits.keras", epochs=2)
        client.register_file(work / "digits.keras", name="digits")
        for _ in client.deploy("digits", name="digits"):
            pass
        sample = x[:1].astype(np.float32)
        client.infer("digits", sample)
        print(f"controller at {controller.address}; starting {n_agents} simulated agents in "
              f"{processes} processes", flush=True)
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        per = n_agents // processes
        procs = [ctx.Process(target=_simulated, args=(i, per, i * per, controller.address,
                                                      token, seconds + 10, out))
                 for i in range(processes)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + JOIN_SPREAD_S + 120
        up = 0
        while time.monotonic() < deadline:
            up = sum(d.state == controller_pb2.DEVICE_STATE_UP for d in client.devices())
            if up >= n_agents + 1:
                break
            time.sleep(2)
        print(f"{up} devices up; waiting 10 s for heartbeats to settle", flush=True)
        time.sleep(10)
        cpu0, _ = _controller_usage(controller.process.pid)
        wall0 = time.monotonic()
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        # The floor: a health check does no work in the controller, so its latency is
        # what the loop (busy with heartbeats) and this machine allow any call.
        health_channel = grpc.insecure_channel(controller.address)
        health = health_pb2_grpc.HealthStub(health_channel)
        load0 = os.getloadavg()[0]
        lat: dict[str, list[float]] = {"Plan": [], "GetDeployment": [], "Infer": [],
                                       "Health (floor)": []}
        listing: list[float] = []
        rss: list[int] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            lat["Plan"].append(_timed(lambda: client.plan("digits")))
            lat["GetDeployment"].append(_timed(lambda: client.deployment("digits")))
            lat["Infer"].append(_timed(lambda: client.infer("digits", sample)))
            lat["Health (floor)"].append(_timed(lambda: health.Check(
                health_pb2.HealthCheckRequest(), timeout=10)))
            if len(lat["Infer"]) % 20 == 1:
                listing.append(_timed(client.devices))
                rss.append(_controller_usage(controller.process.pid)[1])
            time.sleep(0.05)
        cpu1, _ = _controller_usage(controller.process.pid)
        load1 = os.getloadavg()[0]
        health_channel.close()
        cpu_share = (cpu1 - cpu0) / (time.monotonic() - wall0)
        devices = client.devices()
        down = [d.id for d in devices if d.state != "up"]
        db = state / "controller.db"
        wal = Path(str(db) + "-wal")
        for p in procs:
            p.join(timeout=120)
        stats = [out.get(timeout=30)[1] for _ in procs]
        totals = {k: sum(s[k] for s in stats) for k in stats[0]}
        client.close()
    finally:
        _stop(daemons)
    beats_per_s = totals["beats"] / (seconds + 10 + JOIN_SPREAD_S + 5 - 10)   # roughly
    result = {
        "agents": n_agents, "processes": processes, "seconds": seconds, "simulated": totals,
        "heartbeats_per_s_offered": n_agents / 2.0, "heartbeats_per_s_approx": beats_per_s,
        "api": {name: {"calls": len(v), "p50_s": _p(v, 0.5), "p99_s": _p(v, 0.99),
                       "max_s": max(v)} for name, v in lat.items()},
        "list_devices": {"calls": len(listing), "median_s": statistics.median(listing),
                         "max_s": max(listing)},
        "devices_down": down, "controller_cpu_cores": cpu_share,
        "controller_rss_bytes_max": max(rss),
        "sqlite_bytes": db.stat().st_size if db.exists() else 0,
        "sqlite_wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "load_average_1min": [load0, load1], "cores": os.cpu_count(),
    }
    print(f"\n{n_agents} simulated agents, {processes} processes, {seconds:.0f} s measured")
    print(f"  joined {totals['joined']}, heartbeats {totals['beats']} (~{beats_per_s:.0f}/s, "
          f"offered {n_agents / 2:.0f}/s), failed {totals['failed']}, "
          f"unknown {totals['unknown']}, join failures {totals['join_failed']}")
    for name, row in result["api"].items():
        print(f"  {name:<14} p50 {row['p50_s'] * 1000:7.1f} ms  p99 {row['p99_s'] * 1000:7.1f} "
              f"ms  (goal p99 < {P99_GOAL_S * 1000:.0f} ms, {row['calls']} calls)")
    print(f"  ListDevices of {len(devices)}: median {result['list_devices']['median_s']:.2f} s,"
          f" max {result['list_devices']['max_s']:.2f} s (goal < {LIST_GOAL_S:.0f} s)")
    print(f"  devices not up at the end: {len(down)} (goal 0)")
    print(f"  controller: {cpu_share:.2f} cores, RSS max {max(rss) / 1e6:.0f} MB; SQLite "
          f"{result['sqlite_bytes'] / 1e6:.1f} MB + WAL {result['sqlite_wal_bytes'] / 1e6:.1f} MB")
    print(f"  machine: {os.cpu_count()} cores, load average {load0:.1f} -> {load1:.1f} "
          f"(the simulated agents, the controller and whatever else runs here)")
    return result
