"""What the agent reports: CPU, load, memory, temperature, power and energy per shard.

Sampling is cheap (psutil counters, no sleeps). Energy per inference: the busy power above
idle times the compute seconds, under the power model (or the RAPL/INA219 reading when
present; the method is in every sample).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from layerfleet.agent.energy import BOARDS, Ina219, PowerModel, RaplCounter, detect_board

RESERVOIR = 2048  # latencies kept per shard for quantiles


@dataclass
class ShardStats:
    count: int = 0
    joules: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=RESERVOIR))

    @property
    def joules_per_inference(self) -> float:
        return self.joules / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@dataclass(frozen=True)
class TelemetrySnapshot:
    time: float
    cpu_percent_per_core: list[float]
    load1: float
    load5: float
    load15: float
    memory_total: int
    memory_available: int
    agent_rss: int
    temperature_c: float | None
    power_w: float
    energy_method: str
    joules_total: float


class Telemetry:
    def __init__(self, power: PowerModel | None = None, *, power_sensor: str = "",
                 rapl_root: Path | None = None) -> None:
        self.model = power or BOARDS[detect_board()]
        self.cores = psutil.cpu_count() or 1
        self._process = psutil.Process(os.getpid())
        self._rapl: RaplCounter | None = None
        self._ina: Ina219 | None = None
        if power_sensor:
            self._ina = Ina219(power_sensor)  # configured explicitly: fail loudly
        else:
            try:
                self._rapl = RaplCounter(rapl_root) if rapl_root else RaplCounter()
            except (OSError, ValueError):
                self._rapl = None
        self.method = ("ina219" if self._ina else "rapl" if self._rapl
                       else f"model:{self.model.board}")
        self.shards: dict[str, ShardStats] = {}
        self._recording = threading.Lock()
        self._joules_total = 0.0
        self._last_time = time.monotonic()
        psutil.cpu_percent(percpu=True)  # prime the counters

    def record_inference(self, shard: str, seconds: float, threads: int = 1) -> float:
        """Called from the threads that run shards."""
        joules = self.model.busy_joules(seconds, threads, self.cores)
        with self._recording:
            stats = self.shards.setdefault(shard, ShardStats())
            stats.count += 1
            stats.joules += joules
            stats.latencies.append(seconds)
        return joules

    def sample(self) -> TelemetrySnapshot:
        now = time.monotonic()
        elapsed, self._last_time = now - self._last_time, now
        per_core = psutil.cpu_percent(percpu=True)
        utilisation = sum(per_core) / (100.0 * max(len(per_core), 1))
        if self._rapl is not None:
            joules = self._rapl.update()
            watts = joules / elapsed if elapsed > 0 else 0.0
        elif self._ina is not None:
            watts = self._ina.watts()
            joules = watts * elapsed
        else:
            watts = self.model.watts(utilisation)
            joules = watts * elapsed
        self._joules_total += joules
        memory = psutil.virtual_memory()
        load = os.getloadavg()
        return TelemetrySnapshot(
            time=time.time(), cpu_percent_per_core=per_core, load1=load[0], load5=load[1],
            load15=load[2], memory_total=memory.total, memory_available=memory.available,
            agent_rss=self._process.memory_info().rss, temperature_c=_temperature(),
            power_w=watts, energy_method=self.method, joules_total=self._joules_total)


def _temperature() -> float | None:
    zone = Path("/sys/class/thermal/thermal_zone0/temp")
    try:
        return int(zone.read_text()) / 1000.0
    except (OSError, ValueError):
        pass
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:
        return None
    for entries in (sensors() or {}).values():
        for entry in entries:
            if entry.current and not math.isnan(entry.current):
                return float(entry.current)
    return None
