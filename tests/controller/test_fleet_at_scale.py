"""What keeps a controller of 10,000 agents responsive: hot paths read only the rows they
need, and the placement view of the fleet is rebuilt only when a row it depends on changed
(real SQLite throughout)."""

from __future__ import annotations

import time

from layerfleet.controller import planner
from layerfleet.controller.registry import (
    DeploymentRecord,
    DeviceRecord,
    Heartbeat,
    Registry,
    StageRecord,
)


def _device(i: int, **fields: object) -> DeviceRecord:
    defaults: dict[str, object] = {"found_by": "join", "last_seen": time.time(),
                                   "memory_bytes": 4 << 30, "flops_per_s": 6e9}
    return DeviceRecord(id=f"pi-{i}", address=f"127.0.0.1:{6000 + i}",
                        **{**defaults, **fields})  # type: ignore[arg-type]


def _registry(tmp_path, devices: int = 3) -> Registry:
    reg = Registry(tmp_path / "state.db")
    for i in range(devices):
        reg.upsert_device(_device(i))
    return reg


def test_a_deployment_reads_the_states_of_its_own_devices_only(tmp_path):
    reg = _registry(tmp_path, 5)
    reg.set_device_state("pi-3", "down", "silent")
    assert reg.device_states(["pi-3", "pi-1", "pi-3", "ghost"]) == {"pi-1": "up",
                                                                    "pi-3": "down"}
    assert reg.device_states([]) == {}


def test_the_liveness_sweep_reads_probed_devices_and_silent_joined_ones(tmp_path):
    reg = Registry(tmp_path / "state.db")
    now = 1000.0
    reg.upsert_device(_device(0, last_seen=now))                      # joined, heard from
    reg.upsert_device(_device(1, last_seen=now - 10))                 # joined, silent
    reg.upsert_device(_device(2, last_seen=now, found_by="mdns"))     # probed each sweep
    reg.upsert_device(_device(3, last_seen=now - 10))
    reg.set_device_state("pi-3", "down", "already down")
    assert [d.id for d in reg.devices_up(silent_since=now - 6)] == ["pi-1", "pi-2"]
    assert [d.id for d in reg.devices_up()] == ["pi-0", "pi-1", "pi-2"]


def test_heartbeats_are_no_change_to_plan_on_and_device_link_and_deployment_writes_are(
        tmp_path):
    reg = _registry(tmp_path)
    before = reg.changes
    reg.record_heartbeats([Heartbeat("pi-0", time.time(), memory_available=1 << 20)])
    assert reg.changes == before
    deployment = DeploymentRecord(name="d", model="m", state="active", stages=[
        StageRecord("d", 0, 0, 4, "pi-0", "127.0.0.1:6000")])
    for write in (lambda: reg.upsert_device(_device(7)),
                  lambda: reg.set_device_state("pi-7", "down", "silent"),
                  lambda: reg.set_link("pi-0", "pi-1", 1e7, 0.001),
                  lambda: reg.save_deployment(deployment),
                  lambda: reg.set_deployment_state("d", "degraded", "pi-7 is down")):
        seen = reg.changes
        write()
        assert reg.changes > seen


def test_the_plan_fleet_is_rebuilt_when_a_device_changes_not_on_every_heartbeat(tmp_path):
    reg = _registry(tmp_path)
    cache = planner.FleetCache(reg, max_age_s=3600)
    first = cache.fleet()
    assert sorted(d.id for d in first.devices) == ["pi-0", "pi-1", "pi-2"]
    reg.record_heartbeats([Heartbeat("pi-0", time.time(), memory_available=123 << 20)])
    assert cache.fleet() is first           # free memory alone: the view is kept
    reg.set_device_state("pi-2", "down", "silent")
    second = cache.fleet()
    assert sorted(d.id for d in second.devices) == ["pi-0", "pi-1"]
    assert second.device("pi-0").memory_bytes == 123 << 20   # read again with the change
    reg.record_heartbeats([Heartbeat("pi-0", time.time(), memory_available=99 << 20)])
    cache.max_age_s = 0.0                   # older than its age limit: read again
    assert cache.fleet().device("pi-0").memory_bytes == 99 << 20
