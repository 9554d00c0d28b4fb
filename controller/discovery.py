"""How devices become known and how the controller notices them leave.

Three ways in, one admission path (`Discovery.admit`):
- mDNS: agents on the controller's LAN advertise `_layerfleet._tcp.local.`; the controller
  browses, asks each one to Describe itself, and admits it.
- join: agents anywhere else (a cloud VM cannot hear link-local mDNS) dial the controller's
  Fleet service with a join token and then heartbeat.
- static: tests and small setups add an address directly.
Liveness: joined devices must heartbeat; others are probed. A device that misses
`down_after_s` is marked down, and every deployment using it is marked degraded. When it
comes back, its routes (and shards if it lost them) are restored and the deployment is
active again. Two agents claiming one device id are reported, not merged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from layerfleet.agent import names, transport
from layerfleet.agent.client import AgentError
from layerfleet.agent.join import MAX_BACKOFF_S
from layerfleet.controller import calibrate
from layerfleet.controller.agents import AgentPool
from layerfleet.controller.registry import DeviceRecord, Heartbeat, Registry
from layerfleet.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 2.0
# Heartbeats from devices that are up are kept in memory (the latest per device) and written
# in one transaction this often: 10,000 agents at 2 s are 5,000 beats/s, which one SQLite
# transaction (and fsync) each cannot carry. A controller killed loses at most this much
# last-seen time, which only delays marking a silent device down.
FLUSH_INTERVAL_S = 0.25


class Discovery:
    def __init__(self, registry: Registry, agents: AgentPool, *,
                 on_up: Callable[[str], Awaitable[None]] | None = None,
                 heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
                 down_after_s: float | None = None, calibrate_devices: bool = True,
                 restart_grace_s: float = MAX_BACKOFF_S) -> None:
        self.registry = registry
        self.agents = agents
        self.on_up = on_up
        self.heartbeat_interval_s = heartbeat_interval_s
        self.down_after_s = down_after_s or 3 * heartbeat_interval_s
        # After a (re)start, agents that call in may be backing off, up to MAX_BACKOFF_S
        # between attempts: silence from before the start says nothing about them until
        # each has had that long to call again.
        self.restart_grace_s = restart_grace_s
        self.started_at = time.time()
        self.calibrate_devices = calibrate_devices
        self._tasks: set[asyncio.Task[Any]] = set()
        self._browser: Any = None
        self._beats: dict[str, Heartbeat] = {}

    # -- admission ------------------------------------------------------------------------

    async def admit(self, info: Any, address: str, found_by: str) -> DeviceRecord:
        """Record a device that described itself (an agent.proto DeviceInfo); InvalidName
        or ValueError for an id or address that cannot be one."""
        device_id = names.check_name("device", info.device_id)
        transport.check_address(address)
        old = self.registry.device(device_id)
        if old is not None and old.address != address and old.state == "up" \
                and await self._still_claims(old.address, device_id):
            message = (f"device id {device_id} is claimed by {old.address} and {address}: two "
                       f"devices from one SD image? delete the state directory's device-id "
                       f"file on one of them")
            self.registry.add_event("device.duplicate", device_id, message)
            raise DuplicateDevice(message)
        now = time.time()
        record = DeviceRecord(
            id=device_id, address=address, hostname=info.hostname, arch=info.arch,
            cores=info.cores, memory_bytes=info.memory_bytes, runtime=info.runtime,
            version=info.version, state="up", found_by=found_by, last_seen=now)
        if old is not None:  # keep what calibration and telemetry learned
            for name in ("flops_per_s", "link_bandwidth_Bps", "link_rtt_s", "power_w",
                         "energy_method", "cpu_percent", "memory_available", "idle_w",
                         "busy_w", "temperature_c", "joules_total"):
                setattr(record, name, getattr(old, name))
        came_up = old is None or old.state != "up" or old.address != address
        event = None
        if old is None:
            event = ("device.joined", f"{address} via {found_by} ({info.arch}, "
                     f"{info.cores} cores)")
        elif came_up:
            event = ("device.up", f"back at {address} via {found_by}")
        self.registry.upsert_device(record, event=event)
        if came_up:
            if old is not None and old.address != address:
                await self.agents.drop(old.address)
            self._spawn(self._after_up(device_id, address, needs_calibration=not
                                       record.flops_per_s))
        return record

    async def _still_claims(self, address: str, device_id: str) -> bool:
        try:
            info = await asyncio.wait_for(self.agents.get(address).describe(), 2)
        except (AgentError, TimeoutError, grpc.RpcError):
            return False
        return info.device_id == device_id

    async def _after_up(self, device_id: str, address: str, needs_calibration: bool) -> None:
        if self.calibrate_devices and needs_calibration:
            try:
                result = await calibrate.measure(self.agents.get(address))
            except (AgentError, TimeoutError, grpc.RpcError) as exc:
                log.warning("calibrating %s failed: %s", device_id, exc)
            else:
                record = self.registry.device(device_id)
                if record is not None:
                    record.flops_per_s = result.flops_per_s
                    record.link_bandwidth_Bps = result.bandwidth_Bps
                    record.link_rtt_s = result.rtt_s
                    self.registry.upsert_device(record, event=(
                        "device.calibrated", result.describe()))
        if self.on_up is not None:
            await self.on_up(device_id)

    async def add_static(self, address: str) -> DeviceRecord:
        info = await self.agents.get(address).describe()
        return await self.admit(info, address, "static")

    # -- liveness -------------------------------------------------------------------------

    def heartbeat(self, device_id: str, sample: Any) -> bool:
        state = self.registry.device_state(device_id)
        if state is None or state == "duplicate":
            return False
        beat = Heartbeat(device_id, time.time())
        if sample is not None:
            beat.power_w = float(getattr(sample, "power_w", 0.0))
            beat.energy_method = str(getattr(sample, "energy_method", ""))
            cores = list(getattr(sample, "cpu_percent_per_core", []))
            beat.cpu_percent = sum(cores) / len(cores) if cores else 0.0
            beat.memory_available = int(getattr(sample, "memory_available", 0))
            temperature = float(getattr(sample, "temperature_c", math.nan))
            beat.temperature_c = None if math.isnan(temperature) else temperature
            beat.joules_total = float(getattr(sample, "joules_total", 0.0))
        if state == "up":
            # The common case is coalesced: the latest beat per device, written in batches.
            self._beats[device_id] = beat
            return True
        self.flush_heartbeats()
        record = self.registry.device(device_id)
        if record is None:
            return False
        for name in ("last_seen", "power_w", "energy_method", "cpu_percent",
                     "memory_available", "temperature_c", "joules_total"):
            setattr(record, name, getattr(beat, name))
        record.state = "up"
        self.registry.upsert_device(record, event=("device.up", "heartbeat resumed"))
        self._spawn(self._after_up(device_id, record.address, needs_calibration=False))
        return True

    def flush_heartbeats(self) -> None:
        """Write the heartbeats received since the last flush, in one transaction."""
        beats, self._beats = list(self._beats.values()), {}
        self.registry.record_heartbeats(beats)

    async def run_flusher(self) -> None:
        """Flush coalesced heartbeats every FLUSH_INTERVAL_S; cancelled at shutdown."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                self.flush_heartbeats()
            except Exception:
                log.exception("writing heartbeats failed")

    async def check_liveness(self) -> None:
        """One sweep: probe devices that do not heartbeat, mark silent ones down."""
        self.flush_heartbeats()
        now = time.time()
        # Only rows that can need action: 10,000 devices heartbeating are not read here.
        for device in self.registry.devices_up(silent_since=now - self.down_after_s):
            if device.state != "up":
                continue
            if device.found_by != "join":
                if await self._alive(device.address):
                    # (written as a heartbeat: being seen is not a change to plan on)
                    self.registry.record_heartbeats([Heartbeat(
                        device.id, now, device.power_w, device.energy_method,
                        device.cpu_percent, device.memory_available)])
                    continue
            silent, allowed = now - device.last_seen, self.down_after_s
            if device.found_by == "join" and device.last_seen < self.started_at:
                silent, allowed = now - self.started_at, allowed + self.restart_grace_s
            if silent > allowed:
                self.mark_down(device.id, f"silent for {now - device.last_seen:.1f} s "
                                          f"(down after {allowed:.1f} s)")

    async def _alive(self, address: str) -> bool:
        try:
            await asyncio.wait_for(self.agents.get(address).describe(), 2)
        except (AgentError, TimeoutError, grpc.RpcError):
            return False
        return True

    def mark_down(self, device_id: str, reason: str) -> None:
        self.registry.set_device_state(device_id, "down", reason)
        for dep in self.registry.deployments():
            if dep.state == "active" and any(device_id in (s.device, *s.replicas)
                                             for s in dep.stages):
                self.registry.set_deployment_state(
                    dep.name, "degraded", f"device {device_id} is down: {reason}",
                    event=("deploy.degraded", f"device {device_id} is down"))

    async def run(self) -> None:
        """The liveness loop (and the heartbeat writer beside it); cancelled at shutdown."""
        self.started_at = time.time()
        self._spawn(self.run_flusher())
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                await self.check_liveness()
            except Exception:
                log.exception("liveness sweep failed")

    # -- mDNS -----------------------------------------------------------------------------

    async def start_mdns(self, interfaces: Any = None) -> None:
        from layerfleet.agent.discovery import Browser

        def added(found: Any) -> None:
            address = f"{found.addresses[0]}:{found.port}" if found.addresses else ""
            if address:
                self._spawn(self._admit_address(address, "mdns"))

        self._browser = Browser(on_added=added, interfaces=interfaces)
        await self._browser.start()

    async def _admit_address(self, address: str, found_by: str) -> None:
        try:
            info = await asyncio.wait_for(self.agents.get(address).describe(), 5)
            await self.admit(info, address, found_by)
        except (AgentError, TimeoutError, grpc.RpcError, DuplicateDevice, ValueError) as exc:
            log.warning("could not admit %s found by %s: %s", address, found_by, exc)

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.flush_heartbeats()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class DuplicateDevice(Exception):
    pass


class FleetService(fleet_pb2_grpc.FleetServicer):
    """Join and heartbeat for agents that dial the controller (fleet.proto)."""

    def __init__(self, registry: Registry, discovery: Discovery) -> None:
        self.registry = registry
        self.discovery = discovery

    async def Join(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not self.registry.check_token(request.token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "join token not accepted: create one on the controller with "
                                "`layerfleet-controller token create`")
        if not request.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "join needs the agent's reachable address (--advertise)")
        try:
            record = await self.discovery.admit(request.device, request.address, "join")
        except DuplicateDevice as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except ValueError as exc:   # an id or address that cannot be one
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"join refused: {exc}")
        return fleet_pb2.JoinReply(device_id=record.id,
                                   heartbeat_interval_s=self.discovery.heartbeat_interval_s)

    async def Heartbeat(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not self.registry.check_token(request.token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "join token not accepted")
        sample = request.sample if request.HasField("sample") else None
        return fleet_pb2.HeartbeatReply(known=self.discovery.heartbeat(request.device_id, sample))
