"""Shared by the benchmarks: machine description and writing results as JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=1, default=float) + "\n")
    print(f"\nwrote {path}")
    return path
