"""The controller's own costs: plan time through the registry path for MobileNetV2 and
ResNet50 over 3, 10 and 50 simulated devices; deploy time of MobileNetV2 (224x224, 3 real
agents on loopback) with a cold conversion cache versus a warm one.

    python bench/controller_bench.py
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, write  # noqa: E402


def plan_times() -> list[dict]:
    from layerfleet.controller import planner
    from layerfleet.controller.registry import DeviceRecord, ModelRecord

    rows = []
    for name in ("MobileNetV2", "ResNet50"):
        profile = json.loads((RESULTS / "profiles" / f"{name}.json").read_text())
        record = ModelRecord(name=name, digest="", source="", path="", profile=profile)
        for n in (3, 10, 50):
            devices = [DeviceRecord(id=f"pi-{i}", address=f"10.0.0.{i}:50051",
                                    memory_bytes=4 << 30, memory_available=2 << 30,
                                    flops_per_s=(3e9, 6e9, 15e9)[i % 3],
                                    link_bandwidth_Bps=117e6, link_rtt_s=0.0005)
                       for i in range(n)]
            for objective in ("latency", "throughput"):
                times = []
                for _ in range(3):
                    started = time.perf_counter()
                    planner.candidates(record, devices, [], objective=objective, sla_ms=0,
                                       redundancy="none", top_k=3)
                    times.append(time.perf_counter() - started)
                rows.append({"model": name, "devices": n, "objective": objective,
                             "plan_s": statistics.median(times)})
                print(f"plan {name:<12} {n:3d} devices {objective:<11} "
                      f"{statistics.median(times) * 1000:8.1f} ms")
    return rows


async def deploy_times() -> dict:
    from layerfleet.agent.main import AgentServer, Settings
    from layerfleet.controller.client import ControllerClient
    from layerfleet.controller.main import ControllerServer
    from layerfleet.controller.main import Settings as ControllerSettings

    root = Path(tempfile.mkdtemp(prefix="controller-bench-"))
    controller = ControllerServer(ControllerSettings(
        listen="127.0.0.1:0", state_dir=root / "controller", mdns=False,
        cache_dir=root / "cache", heartbeat_interval_s=1.0))
    await controller.start()
    token = controller.registry.create_token()
    agents = []
    for i in range(3):
        agent = AgentServer(Settings(listen="127.0.0.1:0", state_dir=str(root / f"a{i}"),
                                     mdns=False, threads=1, controller=controller.address,
                                     join_token=token))
        await agent.start()
        agents.append(agent)
    while sum(d.flops_per_s > 0 for d in controller.registry.devices()) < 3:
        await asyncio.sleep(0.1)
    client = ControllerClient(controller.address)
    await asyncio.to_thread(client.register_builtin, "MobileNetV2", input_shape=(224, 224, 3))
    result = {}
    for label in ("cold", "warm"):
        started = time.perf_counter()
        await asyncio.to_thread(lambda: list(client.deploy("MobileNetV2",
                                                           objective="throughput")))
        result[f"{label}_s"] = time.perf_counter() - started
        await asyncio.to_thread(client.undeploy, "MobileNetV2")
        print(f"deploy MobileNetV2 over 3 agents, {label} cache: {result[f'{label}_s']:.2f} s")
    result["warm_over_cold"] = result["warm_s"] / result["cold_s"]
    print(f"warm / cold = {result['warm_over_cold']:.3f}")
    client.close()
    for agent in agents:
        await agent.stop(grace_s=0)
    await controller.stop(grace_s=0)
    return result


def main() -> None:
    rows = plan_times()
    deploy = asyncio.run(deploy_times())
    write("controller_bench", {"plan": rows, "deploy": deploy})


if __name__ == "__main__":
    main()
