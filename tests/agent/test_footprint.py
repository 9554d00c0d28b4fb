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
