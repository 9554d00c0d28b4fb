"""The device id: made on first start, kept in the state directory.

Two Pis flashed from one SD image share the state directory's contents, so the id is
stored with a fingerprint of /etc/machine-id and the board's hardware serial; when the
fingerprint no longer matches (a cloned card in another board, or a re-generated
machine-id), a new id is made.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

from layerfleet.agent import files

ID_FILE = "device-id.json"
MACHINE_ID = Path("/etc/machine-id")
SERIAL_SOURCES = (
    Path("/sys/firmware/devicetree/base/serial-number"),  # Raspberry Pi (device tree)
    Path("/sys/class/dmi/id/product_uuid"),               # x86 (root only)
)
CPUINFO = Path("/proc/cpuinfo")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip().strip("\x00")
    except OSError:
        return ""


def hardware_serial(sources: tuple[Path, ...] = SERIAL_SOURCES, cpuinfo: Path = CPUINFO) -> str:
    for path in sources:
        value = _read(path)
        if value:
            return value
    for line in _read(cpuinfo).splitlines():
        if line.lower().startswith("serial"):
            return line.split(":", 1)[1].strip()
    return ""


def fingerprint(machine_id: Path = MACHINE_ID, serial_sources: tuple[Path, ...] = SERIAL_SOURCES,
                cpuinfo: Path = CPUINFO) -> str:
    text = f"{_read(machine_id)}|{hardware_serial(serial_sources, cpuinfo)}"
    return hashlib.sha256(text.encode()).hexdigest()


def device_id(state_dir: Path, *, machine_id: Path = MACHINE_ID,
              serial_sources: tuple[Path, ...] = SERIAL_SOURCES, cpuinfo: Path = CPUINFO) -> str:
    current = fingerprint(machine_id, serial_sources, cpuinfo)
    path = Path(state_dir) / ID_FILE
    try:
        stored = json.loads(path.read_text())
        if stored.get("fingerprint") == current and stored.get("id"):
            return str(stored["id"])
    except (OSError, ValueError, AttributeError):
        pass  # missing or corrupt: make a new one
    new_id = f"lf-{secrets.token_hex(6)}"
    files.private_dir(path.parent)
    files.write_atomic(path, json.dumps({"id": new_id, "fingerprint": current}).encode())
    return new_id
