"""`layerfleet-agent`: the daemon on each device (wiring only).

Settings come from flags, then LAYERFLEET_* environment variables, then a TOML file
(--config), then defaults. One asyncio event loop runs the gRPC server, the mDNS
advertisement, the controller heartbeat, telemetry and the systemd watchdog. On SIGTERM:
health goes NOT_SERVING, the mDNS record is withdrawn, in-flight requests get a grace
period to finish, then the agent exits 0.

Prints `layerfleet-agent serving on HOST:PORT` on stderr once it serves (with --listen
HOST:0, the port it picked).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import signal
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from layerfleet import __version__
from layerfleet.agent import files, memory, reflection, sdnotify, transport
from layerfleet.agent.budget import Budget
from layerfleet.agent.dataport_server import DataPortServer
from layerfleet.agent.energy import BOARDS, PowerModel, detect_board
from layerfleet.agent.identity import device_id
from layerfleet.agent.pipeline import Pipeline
from layerfleet.agent.service import AgentService, runtime_label
from layerfleet.agent.store import DEFAULT_QUOTA, ShardStore
from layerfleet.agent.telemetry import Telemetry
from layerfleet.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("layerfleet.agent")
HEALTH_INTERVAL_S = 5.0   # how often health is checked when systemd sets no watchdog
# After a burst that held this much, free memory is given back (memory.py) once it is over.
TRIM_AFTER_BYTES = 16 << 20
TRIM_AFTER_CONNECTIONS = 16


def default_state_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "layerfleet-agent"


@dataclass
class Settings:
    listen: str = "127.0.0.1:50051"
    advertise: str = ""          # HOST:PORT others use to reach this agent
    state_dir: str = ""
    threads: int = 0             # LiteRT threads per shard run; 0 = all cores
    workers: int = 1             # shard runs at once
    quota_bytes: int = DEFAULT_QUOTA
    max_request_bytes: int = 256 << 20   # tensor bytes in one Infer request
    max_inflight_bytes: int = 512 << 20  # tensor bytes of all requests held at once
    request_timeout_s: float = 30.0      # a request's deadline when its sender sets none
    max_connections: int = 128           # data-port connections (a thread each)
    mdns: bool = True
    data_port: str = "auto"      # auto (gRPC port + 1), off, or a port number (0: any)
    controller: str = ""
    join_token: str = ""
    insecure: bool = False
    metrics_port: int = 0        # 0 = no /metrics
    allow_faults: bool = False
    power_sensor: str = ""       # e.g. ina219:/dev/i2c-1:0x40
    idle_watts: float = 0.0      # override the board's power model
    busy_watts: float = 0.0
    grace_s: float = 5.0
    log_level: str = "info"


_BOOL_TRUE = {"1", "true", "yes", "on"}


def _coerce(name: str, value: Any, kind: type) -> Any:
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in _BOOL_TRUE
        return kind(value)
    except (TypeError, ValueError):
        raise SystemExit(f"layerfleet-agent: setting {name}={value!r} is not a valid "
                         f"{kind.__name__}") from None


def load_settings(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """flags > LAYERFLEET_* environment > --config TOML > defaults."""
    env = dict(os.environ if env is None else env)
    args = _parser().parse_args(argv)
    merged: dict[str, Any] = {}
    if args.config:
        try:
            merged.update(tomllib.loads(Path(args.config).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit(f"layerfleet-agent: cannot read config {args.config}: {exc}")
        unknown = set(merged) - {f.name for f in fields(Settings)} - {"no_mdns"}
        if unknown:
            raise SystemExit(f"layerfleet-agent: unknown setting(s) in {args.config}: "
                             f"{', '.join(sorted(unknown))}")
    for f in fields(Settings):
        key = f"LAYERFLEET_{f.name.upper()}"
        if key in env:
            merged[f.name] = env[key]
    for name, value in vars(args).items():
        if name != "config" and value is not None:
            merged[name] = value
    if merged.pop("no_mdns", False) in (True, "1", "true"):
        merged["mdns"] = False
    kinds = {f.name: type(f.default) for f in fields(Settings)}
    settings = Settings(**{k: _coerce(k, v, kinds[k]) for k, v in merged.items()})
    if settings.data_port not in ("auto", "off") and not (
            settings.data_port.isdigit() and int(settings.data_port) <= 65535):
        raise SystemExit(f"layerfleet-agent: --data-port {settings.data_port!r} is not 'auto', "
                         f"'off' or a port number")
    return settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="layerfleet-agent",
        description="Serve LiteRT layer shards over gRPC and pass activations to the next "
                    "device. Settings: flags > LAYERFLEET_<NAME> environment > --config > "
                    "defaults.")
    add = p.add_argument
    add("--config", help="TOML file with the settings below (keys as the long flags, "
                         "with underscores).")
    add("--listen", help="gRPC address (default 127.0.0.1:50051; HOST:0 picks a port).")
    add("--advertise", help="HOST:PORT the controller and other agents use to reach this "
                            "agent (default: the listen address).")
    add("--state-dir", help="Where shards, routes and the device id live (default "
                            "$STATE_DIRECTORY or ~/.local/state/layerfleet-agent).")
    add("--threads", type=int, help="LiteRT threads per shard run (default: all cores).")
    add("--workers", type=int, help="Shard runs at the same time (default 1).")
    add("--quota-bytes", type=int, help="Disk quota for shards (default 1 GiB).")
    add("--max-request-bytes", type=int,
        help="Largest Infer request (tensor bytes) this agent accepts (default 256 MiB); "
             "bigger ones get RESOURCE_EXHAUSTED.")
    add("--max-inflight-bytes", type=int,
        help="Tensor bytes of all requests this agent holds at once, received and not yet "
             "answered (default 512 MiB); past it new requests get RESOURCE_EXHAUSTED and "
             "senders with replicas go elsewhere.")
    add("--request-timeout", dest="request_timeout_s", type=float,
        help="Seconds a request may take when its sender sets no deadline (default 30).")
    add("--max-connections", type=int,
        help="Data-port connections at once, a thread each (default 128); past it the "
             "longest-idle one is closed, or the sender is told to use gRPC.")
    add("--no-mdns", action="store_const", const=True, help="Do not advertise over mDNS.")
    add("--data-port",
        help="Where activations arrive: a raw-TCP port on the --listen host beside the gRPC "
             "port, used by every sender that finds it (DeviceInfo.data_port). 'auto' "
             "(default): the gRPC port + 1, or any free port when that is 0; a number (0: "
             "any free port); 'off': activations over gRPC Infer only, here and to next "
             "hops.")
    add("--controller", help="Controller HOST:PORT to join (for agents off its LAN).")
    add("--join-token", help="Token from `layerfleet-controller token create`. Prefer "
                             "LAYERFLEET_JOIN_TOKEN in the environment or a 0600 config "
                             "file: a flag is visible to every local user.")
    add("--insecure", action="store_const", const=True,
        help="Allow a non-loopback --listen without TLS (until mutual TLS lands).")
    add("--metrics-port", type=int, help="Serve Prometheus /metrics on this port (0: off).")
    add("--allow-faults", action="store_const", const=True,
        help="Enable the SetFaults RPC (tests and chaos drills only).")
    add("--power-sensor", help="INA219 power sensor, e.g. ina219:/dev/i2c-1:0x40.")
    add("--idle-watts", type=float, help="Board idle power for the power model.")
    add("--busy-watts", type=float, help="Board full-load power for the power model.")
    add("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def _data_port(setting: str, grpc_port: int, listen: str) -> int:
    """The port to serve activations on, from a --data-port setting checked by load_settings."""
    if setting == "auto":
        return grpc_port + 1 if int(listen.rsplit(":", 1)[1]) else 0
    return int(setting)


class AgentServer:
    """The whole agent as an object tests can start and stop on loopback."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir) if settings.state_dir else default_state_dir()
        files.private_dir(self.state_dir)
        self.device_id = device_id(self.state_dir)
        board = BOARDS[detect_board()]
        power = PowerModel(board.board, settings.idle_watts or board.idle_w,
                           settings.busy_watts or board.busy_w)
        self.telemetry = Telemetry(power, power_sensor=settings.power_sensor)
        self.store = ShardStore(self.state_dir, settings.quota_bytes)
        threads = settings.threads or os.cpu_count() or 1
        self.pipeline = Pipeline(self.store, self.state_dir, self.device_id,
                                 workers=max(settings.workers, 1), threads_per_run=threads,
                                 on_inference=self._record,
                                 use_data_ports=settings.data_port != "off")
        self.budget = Budget(settings.max_inflight_bytes)
        self.dataport = (DataPortServer(self.pipeline, self.budget,
                                        max_payload_bytes=settings.max_request_bytes,
                                        max_connections=settings.max_connections)
                         if settings.data_port != "off" else None)
        self.health = health.aio.HealthServicer()
        self.server: Any = None
        self.service: AgentService | None = None
        self.address = ""
        self._tasks: list[asyncio.Task[Any]] = []
        self._advertiser: Any = None
        self._stop_metrics: Callable[[], None] | None = None
        self._mdns: asyncio.Task[None] | None = None

    def _record(self, shard: str, seconds: float) -> None:
        joules = self.telemetry.record_inference(shard, seconds,
                                                 self.pipeline.compute.threads_per_run or 1)
        if self.settings.metrics_port:
            from layerfleet.agent import metrics

            metrics.observe_inference(shard, seconds, joules)

    async def start(self) -> str:
        self.pipeline.start(asyncio.get_running_loop())   # next hops connect on it
        self.server = transport.server()
        port = transport.add_port(self.server, self.settings.listen,
                                  insecure=self.settings.insecure)
        host = self.settings.listen.rsplit(":", 1)[0]
        self.address = self.settings.advertise or f"{host}:{port}"
        data_port = 0
        if self.dataport is not None:
            wanted = _data_port(self.settings.data_port, port, self.settings.listen)
            try:
                data_port = await self.dataport.start(host, wanted)
            except OSError as exc:
                raise OSError(f"cannot listen for activations on {host}:{wanted}: "
                              f"{exc.strerror or exc}; pick another with --data-port, or "
                              f"--data-port off") from None
        self.service = AgentService(self.store, self.pipeline, self.telemetry,
                                    device_id=self.device_id, address=self.address,
                                    budget=self.budget,
                                    allow_faults=self.settings.allow_faults,
                                    data_port=data_port,
                                    max_request_bytes=self.settings.max_request_bytes)
        agent_pb2_grpc.add_AgentServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(self.server, [
            agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
        self.pipeline.restore_routes()
        await self.server.start()
        self.port = port
        for name in ("", "layerfleet.v1.Agent"):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.settings.mdns:
            # In the background: zeroconf probes and announces for about 2 s, and the agent
            # serves (and tells systemd so) as soon as its ports are bound.
            self._mdns = asyncio.create_task(self._start_mdns(port), name="mdns advertise")
        if self.settings.controller:
            from layerfleet.agent.join import join_and_heartbeat

            self._tasks.append(asyncio.create_task(join_and_heartbeat(
                self.settings.controller, self.settings.join_token, self.address,
                self.service.describe, self.service.sample)))
        if self.settings.metrics_port:
            from layerfleet.agent import metrics

            _, self._stop_metrics = metrics.start_metrics_server(self.settings.metrics_port)
            self._tasks.append(asyncio.create_task(self._metrics_loop()))
        self._tasks.append(asyncio.create_task(
            self._watchdog(min(sdnotify.watchdog_interval_s() or HEALTH_INTERVAL_S,
                               HEALTH_INTERVAL_S))))
        sdnotify.notify("READY=1\nSTATUS=serving on " + self.address)
        return self.address

    async def _start_mdns(self, port: int) -> None:
        import psutil
        from layerfleet.agent.discovery import Advertiser, build_txt

        host = self.address.rsplit(":", 1)[0]
        txt = build_txt(device_id=self.device_id, arch=platform.machine(),
                        cores=os.cpu_count() or 1, memory_bytes=psutil.virtual_memory().total,
                        runtime=runtime_label(), version=__version__, port=port)
        addresses = [host] if host not in ("0.0.0.0", "", "[::]") else None
        advertiser = Advertiser(txt, port, addresses=addresses)
        try:
            await advertiser.start()
        except BaseException as exc:  # no multicast route, a name taken, or stopping
            await advertiser.close()
            if not isinstance(exc, Exception):
                raise
            # Join and static addresses still work without it.
            log.warning("mDNS advertisement is off: %s", exc)
            return
        self._advertiser = advertiser

    async def _metrics_loop(self) -> None:
        from layerfleet.agent import metrics

        while True:
            metrics.update_from_snapshot(self.telemetry.sample())
            await asyncio.sleep(5)

    @property
    def healthy(self) -> bool:
        """Serving on every port it announced (a data port that cannot accept is not)."""
        return self.dataport is None or self.dataport.healthy

    async def _watchdog(self, interval: float) -> None:
        """Health checks and systemd see a data port that cannot accept: health goes
        NOT_SERVING and the watchdog stops, so systemd restarts the agent."""
        reported = True
        trims = 0   # still to do: one when a burst ends, one more a loop later for what the
        uploads = 0   # senders' connections released as they wound down
        while True:
            connections, most = 0, 0
            if self.dataport is not None:
                most, connections = self.dataport.most_connections(), \
                    len(self.dataport.connections)
            # A burst of requests, of connections (a thread and buffers each) or of shard
            # uploads is over.
            if self.budget.burst_over(TRIM_AFTER_BYTES) or \
                    most - connections >= TRIM_AFTER_CONNECTIONS or \
                    self.service is not None and self.service.uploads_started != uploads:
                uploads = self.service.uploads_started if self.service is not None else 0
                trims = 2
            if trims:
                trims -= 1
                await asyncio.to_thread(memory.trim)
            healthy = self.healthy
            if healthy:
                sdnotify.notify("WATCHDOG=1")
            if healthy != reported:
                reported = healthy
                if not healthy:
                    log.error("the data port cannot accept connections: reporting "
                              "NOT_SERVING and stopping the watchdog")
                status = health_pb2.HealthCheckResponse.SERVING if healthy else \
                    health_pb2.HealthCheckResponse.NOT_SERVING
                for name in ("", "layerfleet.v1.Agent"):
                    await self.health.set(name, status)
            await asyncio.sleep(interval)

    async def stop(self, grace_s: float | None = None) -> None:
        sdnotify.notify("STOPPING=1")
        for name in ("", "layerfleet.v1.Agent"):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._mdns is not None:
            # Let the announcements finish (bounded by zeroconf's timers), so the goodbye
            # below withdraws a record that is really out there.
            await asyncio.wait({self._mdns}, timeout=5)
            self._mdns.cancel()
        if self._advertiser is not None:
            await self._advertiser.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        grace = self.settings.grace_s if grace_s is None else grace_s
        # New calls are refused; calls in flight get the grace period to finish.
        stopping = [self.server.stop(grace)] if self.server is not None else []
        if self.dataport is not None:
            stopping.append(self.dataport.stop(grace))
        await asyncio.gather(*stopping)
        await self.pipeline.close()
        if self._stop_metrics is not None:
            await asyncio.to_thread(self._stop_metrics)


async def serve(settings: Settings) -> None:
    agent = AgentServer(settings)
    address = await agent.start()
    print(f"layerfleet-agent serving on {address}", file=sys.stderr, flush=True)
    log.info("device %s, state in %s", agent.device_id, agent.state_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight requests (up to %.0f s)", settings.grace_s)
    await agent.stop()


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except transport.InsecureListen as exc:
        print(f"layerfleet-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"layerfleet-agent: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
