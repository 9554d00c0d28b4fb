"""The agent stays small: nothing in layerfleet.agent imports TensorFlow or Keras."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import layerfleet.agent


def test_no_agent_module_imports_tensorflow():
    modules = [f"layerfleet.agent.{m.name}"
               for m in pkgutil.iter_modules(layerfleet.agent.__path__)]
    assert "layerfleet.agent.main" in modules
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', "
            "'layerfleet.controller'}))\n"
            "print(sorted(m for m in sys.modules if m.startswith('layerfleet.controller')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "[]"


def test_every_agent_module_imports_on_its_own():
    """Imports point one way (docs/agent.md, "Data path"): each module loads in a fresh
    interpreter with nothing imported before it, so no cycle hides behind import order."""
    modules = [f"layerfleet.agent.{m.name}"
               for m in pkgutil.iter_modules(layerfleet.agent.__path__)]
    code = ("import subprocess, sys\n"
            f"failed = [m for m in {modules!r} if subprocess.run("
            "[sys.executable, '-c', f'import {m}'], capture_output=True).returncode]\n"
            "print(failed)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


IDLE_AGENT = """
import asyncio, sys
from layerfleet.agent.client import AgentClient
from layerfleet.agent.main import AgentServer, Settings
from layerfleet.agent.service import runtime_label

async def main():
    # mDNS off: on a shared LAN (loopback here) any controller browsing would find the agent
    # and calibrate it, which loads LiteRT for good reason. The mDNS record's runtime comes
    # from runtime_label(), called below as _start_mdns calls it.
    agent = AgentServer(Settings(listen="127.0.0.1:0", state_dir=sys.argv[1], mdns=False))
    address = await agent.start()
    async with AgentClient(address) as client:
        info = await client.describe()
        speed = (await client.benchmark(runs=1)).flops_per_s   # as a controller calibrates
    label = runtime_label()
    await agent.stop(grace_s=0)
    print(info.runtime)
    print(label)
    print(sorted(m for m in sys.modules if m.startswith("ai_edge_litert")))
    print(speed)

asyncio.run(main())
"""


def test_an_idle_agent_names_its_runtime_and_is_calibrated_without_loading_it(tmp_path):
    """Describe and the mDNS record name the LiteRT runtime, and a Benchmark measures it; an
    agent with no shard to run loads the interpreter for neither (LiteRT, and what one run
    leaves behind, cost ~16 MiB of the 64 MB budget)."""
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-c", IDLE_AGENT, str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    described, label, modules, speed = out.strip().split("\n")
    assert described == label == f"ai-edge-litert {version('ai-edge-litert')}"
    assert "ai_edge_litert.interpreter" not in modules
    assert float(speed) > 1e8   # FLOP/s: measured, in a child process
