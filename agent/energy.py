"""Where a device's watts come from, labelled in every sample.

Preference: a measured counter (Intel RAPL via powercap sysfs), a configured INA219 power
sensor on I2C, else a power model: P = idle + (busy - idle) * CPU utilisation.

Power-model defaults (whole board, 5 V input) are published measurements:
- Raspberry Pi 4 B: idle 540 mA = 2.7 W, `stress --cpu 4` 1280 mA = 6.4 W
  (Jeff Geerling's Pi Dramble power benchmarks, pidramble.com/wiki/benchmarks/power-consumption).
- Raspberry Pi 3 B+: idle 350 mA = 1.9 W, stress 980 mA = 5.1 W (same source).
- generic-x86: a placeholder for one small VM core pair (10 W idle, 35 W busy); override
  with --idle-watts/--busy-watts for a real machine.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

RAPL_ROOT = Path("/sys/class/powercap")
DEVICE_MODEL = Path("/proc/device-tree/model")


@dataclass(frozen=True, slots=True)
class PowerModel:
    board: str
    idle_w: float
    busy_w: float

    def watts(self, utilisation: float) -> float:
        """utilisation: 0..1 over all cores."""
        u = min(max(utilisation, 0.0), 1.0)
        return self.idle_w + (self.busy_w - self.idle_w) * u

    def busy_joules(self, seconds: float, cores_used: float, cores: int) -> float:
        """Energy above idle for `seconds` of work on `cores_used` of `cores` cores."""
        return (self.busy_w - self.idle_w) * min(cores_used / max(cores, 1), 1.0) * seconds


BOARDS: dict[str, PowerModel] = {
    "raspberry-pi-4": PowerModel("raspberry-pi-4", 2.7, 6.4),
    "raspberry-pi-3": PowerModel("raspberry-pi-3", 1.9, 5.1),
    "generic-x86": PowerModel("generic-x86", 10.0, 35.0),
}


def detect_board(model_file: Path = DEVICE_MODEL) -> str:
    try:
        text = model_file.read_text(errors="replace").strip("\x00\n ").lower()
    except OSError:
        return "generic-x86"
    if "raspberry pi 4" in text:
        return "raspberry-pi-4"
    if "raspberry pi 3" in text:
        return "raspberry-pi-3"
    return "generic-x86"


def board_name(model_file: Path = DEVICE_MODEL) -> str:
    try:
        return model_file.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return "generic-x86"


class RaplCounter:
    """Package energy from Intel RAPL (microjoules, wraps at max_energy_range_uj)."""

    def __init__(self, root: Path = RAPL_ROOT) -> None:
        self.zones = sorted(p for p in root.glob("intel-rapl:*") if ":" in p.name
                            and p.name.count(":") == 1)
        if not self.zones:
            raise FileNotFoundError(f"no RAPL zones under {root}")
        self._last = [self._read(z) for z in self.zones]  # PermissionError if not readable
        self._ranges = [int((z / "max_energy_range_uj").read_text()) for z in self.zones]
        self.joules = 0.0

    @staticmethod
    def _read(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def update(self) -> float:
        """Read the counters; return joules since the last update (wraparound handled)."""
        delta = 0
        for i, zone in enumerate(self.zones):
            now = self._read(zone)
            step = now - self._last[i]
            if step < 0:
                step += self._ranges[i]
            delta += step
            self._last[i] = now
        joules = delta / 1e6
        self.joules += joules
        return joules


# INA219 registers (TI datasheet SBOS448G, section 8.6): bus voltage 0x02, power 0x03,
# current 0x04, calibration 0x05. Bus voltage: bits 15..3, LSB 4 mV.
INA219_BUS_VOLTAGE, INA219_POWER, INA219_CALIBRATION = 0x02, 0x03, 0x05
I2C_SLAVE = 0x0703


def ina219_bus_volts(raw: int) -> float:
    return ((raw >> 3) & 0x1FFF) * 0.004


def ina219_calibration(shunt_ohms: float, current_lsb_a: float) -> int:
    """Datasheet equation 1: Cal = trunc(0.04096 / (Current_LSB * R_shunt))."""
    return int(0.04096 / (current_lsb_a * shunt_ohms))


def ina219_watts(raw_power: int, current_lsb_a: float) -> float:
    """Datasheet equation 5: Power_LSB = 20 * Current_LSB."""
    return raw_power * 20 * current_lsb_a


class Ina219:
    """A TI INA219 on an I2C bus, e.g. spec 'ina219:/dev/i2c-1:0x40'."""

    def __init__(self, spec: str, shunt_ohms: float = 0.1, current_lsb_a: float = 1e-4) -> None:
        _, bus, address = spec.split(":")
        self.current_lsb_a = current_lsb_a
        self.fd = os.open(bus, os.O_RDWR)
        fcntl.ioctl(self.fd, I2C_SLAVE, int(address, 0))
        cal = ina219_calibration(shunt_ohms, current_lsb_a)
        os.write(self.fd, bytes([INA219_CALIBRATION, cal >> 8, cal & 0xFF]))

    def _register(self, register: int) -> int:
        os.write(self.fd, bytes([register]))
        high, low = os.read(self.fd, 2)
        return (high << 8) | low

    def watts(self) -> float:
        return ina219_watts(self._register(INA219_POWER), self.current_lsb_a)
