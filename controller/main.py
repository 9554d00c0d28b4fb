"""`layerfleet-controller`: the daemon on the cloud VM (wiring only).

    layerfleet-controller [serve] [--listen ADDR] [--http ADDR|off] [--state-dir DIR]
                          [--insecure] [--http-insecure] [--no-mdns]
    layerfleet-controller token create [--label TEXT]

One asyncio event loop: the gRPC server (Controller + Fleet + health + reflection), the
HTTP port (dashboard, its live stream and /metrics), the liveness sweep and the mDNS
browser. SIGTERM: health NOT_SERVING, in-flight calls get a
grace period, then everything stops. TensorFlow is imported only when a model is
registered or deployed, so the daemon starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from layerfleet.agent import files, names, reflection, transport
from layerfleet.agent.join import MAX_BACKOFF_S
from layerfleet.controller import calibrate, planner
from layerfleet.controller.agents import AgentPool
from layerfleet.controller.api import ControllerService
from layerfleet.controller.catalog import Catalog
from layerfleet.controller.dashboard import Dashboard
from layerfleet.controller.deployer import Deployer
from layerfleet.controller.discovery import Discovery, FleetService
from layerfleet.controller.events import EventBus
from layerfleet.controller.metrics import ControllerMetrics
from layerfleet.controller.observed import Observed
from layerfleet.controller.placement.plan import ReplanState, should_replan
from layerfleet.controller.registry import Registry
from layerfleet.controller.router import Router
from layerfleet.v1 import controller_pb2, controller_pb2_grpc, fleet_pb2, fleet_pb2_grpc

log = logging.getLogger("layerfleet.controller")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEFAULT_LISTEN = "127.0.0.1:50050"
DEFAULT_HTTP = "127.0.0.1:50080"
MAX_MESSAGE_BYTES = 64 << 20


def default_state_dir() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; otherwise the XDG state home.
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "layerfleet-controller"


@dataclass
class Settings:
    listen: str = DEFAULT_LISTEN
    state_dir: Path | None = None
    db: Path | None = None
    cache_dir: Path | None = None
    insecure: bool = False
    mdns: bool = True
    heartbeat_interval_s: float = 2.0
    missed_heartbeats: int = 3    # a device silent this many intervals is marked down
    calibrate: bool = True
    replan: bool = True           # re-plan and switch when devices go down or come up
    # Seconds past the usual silence before a joined device is marked down after this
    # controller starts: agents back off up to this long while it is away.
    restart_grace_s: float = MAX_BACKOFF_S
    # Drift: idle devices are re-benchmarked this often (0: never); a measured speed more
    # than drift_threshold off the one planned with, for drift_sustain_s, re-plans (not
    # again within replan_cooldown_s).
    recalibrate_interval_s: float = 300.0
    drift_threshold: float = 0.2
    drift_sustain_s: float = 30.0
    replan_cooldown_s: float = 60.0
    # The dashboard and /metrics: "" = off (the object's default, so tests pick a port);
    # the command line defaults to DEFAULT_HTTP. Non-loopback needs http_insecure.
    http: str = ""
    http_insecure: bool = False
    http_optional: bool = False   # the default port: if it is taken, warn and go on without


class ControllerServer:
    """The whole daemon as an object tests can start and stop on loopback."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        state = files.private_dir(settings.state_dir or default_state_dir())
        self.registry = Registry(settings.db or state / "controller.db")
        self.agents = AgentPool()
        self.events = EventBus()
        self.registry.listeners.append(self.events.notify)
        self.metrics = ControllerMetrics(self.registry)
        self.observed = Observed(sink=self.metrics)
        self.catalog = Catalog(self.registry, state / "models")
        self.deployer = Deployer(self.registry, self.agents, state / "deployments",
                                 settings.cache_dir or state / "shard-cache")
        self.router = Router(self.registry, self.agents, self.observed)
        self.discovery = Discovery(self.registry, self.agents, on_up=self._device_up,
                                   heartbeat_interval_s=settings.heartbeat_interval_s,
                                   down_after_s=settings.missed_heartbeats
                                   * settings.heartbeat_interval_s,
                                   calibrate_devices=settings.calibrate,
                                   restart_grace_s=settings.restart_grace_s)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else \
            health.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.dashboard: Dashboard | None = None
        self._liveness: asyncio.Task[None] | None = None
        self._replanner: asyncio.Task[None] | None = None
        self._recalibrator: asyncio.Task[None] | None = None
        self._replan_state: dict[str, ReplanState] = {}
        self.drift = calibrate.Drift()
        # (Registry.changes, Drift.measured) at the last sweep that moved nothing.
        self._replan_settled: tuple[int, int] = (-1, -1)

    async def _device_up(self, device_id: str) -> None:
        await self.deployer.restore_device(device_id)
        for dep in self.registry.deployments():
            self.router.forget(dep.name)
        self.events.notify()

    async def _replan_once(self) -> None:
        """Ask the placement engine whether each serving deployment should move."""
        # Only a device or deployment row that changed, a new speed measurement, or a drift
        # waiting out its sustain time can change the answer: when none did since a sweep
        # that moved nothing, skip the read of every device row (10,000 rows: ~0.1 s of the
        # event loop).
        mark = (self.registry.changes, self.drift.measured)
        waiting = any(state.drifting_since for state in self._replan_state.values())
        if mark == self._replan_settled and not waiting:
            return
        settled = True
        # A device counts once calibrated: re-planning onto a guessed speed helps nobody.
        devices = [d for d in self.registry.devices() if d.flops_per_s > 0]
        fleet_now = planner.fleet_from(devices, self.registry.links())
        observations, now = self.drift.observations(), time.monotonic()
        moved: set[str] = set()
        drifted: list[str] = []
        for dep in self.registry.deployments():
            current = dep.plan.placement
            if dep.state not in ("active", "degraded") or current is None:
                continue
            # Start from the devices the current plan could use, so a device that arrives
            # between the plan and the first check still counts as new.
            state = self._replan_state.get(dep.name)
            if state is None or state.plan_generation != dep.plan.generation:
                state = self._replan_state[dep.name] = ReplanState(
                    seen_up=set(dep.plan.considered), plan_generation=dep.plan.generation)
            decision = should_replan(
                current, fleet_now, observations, state, now=now,
                threshold=self.settings.drift_threshold,
                sustain_s=self.settings.drift_sustain_s,
                cooldown_s=self.settings.replan_cooldown_s)
            if not decision.replan:
                continue
            if decision.drifted:
                # Plan with what was measured from now on (this deployment and the rest).
                drifted += self._adopt_speeds(decision.drifted)
            settled = False
            moved.add(dep.name)
            await self._move(dep.name, decision.reason)
        if drifted:   # the other deployments were planned with the old speeds too
            for dep in self.registry.deployments():
                if dep.name not in moved and dep.state in ("active", "degraded") \
                        and dep.plan.placement is not None:
                    await self._move(dep.name, f"speed of {', '.join(drifted)} changed")
        if settled:
            self._replan_settled = mark

    def _adopt_speeds(self, device_ids: tuple[str, ...]) -> list[str]:
        """Make the speeds the re-benchmarks measured the ones the planner uses."""
        adopted = []
        for device_id in device_ids:
            record, estimate = self.registry.device(device_id), self.drift.estimate(device_id)
            if record is None or estimate is None:
                continue
            measured = estimate.flops_per_s
            message = (f"measured {measured / 1e9:.2f} GFLOP/s while idle (median of the "
                       f"last {calibrate.ESTIMATE_OF}); planned with "
                       f"{record.flops_per_s / 1e9:.2f}")
            record.flops_per_s = measured
            self.registry.upsert_device(record, event=("device.recalibrated", message))
            adopted.append(device_id)
        return adopted

    async def _move(self, name: str, reason: str) -> None:
        async def drain(route: str) -> None:
            self.router.forget(name)  # new requests take the new chain from here on
            await self.router.drain(route)

        if await self.deployer.replan(name, reason, drain=drain):
            self.router.forget(name)
            self.events.notify()

    async def _replan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await self._replan_once()
            except Exception:
                log.exception("re-planning failed")

    async def _recalibrate_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.recalibrate_interval_s)
            try:
                await calibrate.recheck(self.registry, self.agents, self.drift)
            except Exception:
                log.exception("re-benchmarking failed")

    async def start(self) -> int:
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        controller_pb2_grpc.add_ControllerServicer_to_server(
            ControllerService(self.registry, self.catalog, self.deployer, self.router,
                              self.events), self.server)
        fleet_pb2_grpc.add_FleetServicer_to_server(
            FleetService(self.registry, self.discovery), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [controller_pb2.DESCRIPTOR.services_by_name["Controller"].full_name,
                 fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable(self.server, names)
        self.port = transport.add_port(self.server, self.settings.listen,
                                       insecure=self.settings.insecure)
        if self.settings.http:
            self.dashboard = Dashboard(
                self.registry, self.events, self.observed, self.metrics,
                listen=self.settings.http, allow_remote=self.settings.http_insecure,
                controller_address=self.address)
        await self.server.start()
        if self.dashboard is not None:
            try:
                await self.dashboard.start()
            except OSError as exc:
                if not self.settings.http_optional:
                    await self.server.stop(0)
                    raise
                log.warning("%s; the dashboard is off (choose a port with --http)", exc)
                self.dashboard = None
        await self.deployer.recover()
        for name in ("", "layerfleet.v1.Controller"):
            await _set_health(self.health, name, health_pb2.HealthCheckResponse.SERVING)
        self._liveness = asyncio.create_task(self.discovery.run())
        if self.settings.replan:
            self._replanner = asyncio.create_task(self._replan_loop())
            if self.settings.calibrate and self.settings.recalibrate_interval_s > 0:
                self._recalibrator = asyncio.create_task(self._recalibrate_loop())
        if self.settings.mdns:
            try:
                await self.discovery.start_mdns()
            except OSError as exc:  # no multicast-capable interface: join still works
                log.warning("mDNS browsing is off: %s", exc)
        self.registry.add_event("controller.started", self.address, "serving")
        return self.port

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace_s: float = 5.0) -> None:
        for name in ("", "layerfleet.v1.Controller"):
            await _set_health(self.health, name, health_pb2.HealthCheckResponse.NOT_SERVING)
        for task in (self._liveness, self._replanner, self._recalibrator):
            if task is not None:
                task.cancel()
        await self.discovery.stop()
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self.server is not None:
            await self.server.stop(grace_s)
        await self.agents.close()
        self.registry.close()


async def _set_health(servicer: object, name: str, status: int) -> None:
    result = servicer.set(name, status)  # type: ignore[attr-defined]
    if asyncio.iscoroutine(result):
        await result


async def serve(settings: Settings) -> None:
    server = ControllerServer(settings)
    port = await server.start()
    print(f"layerfleet-controller serving on {server.address}", file=sys.stderr, flush=True)
    if server.dashboard is not None:
        print(f"layerfleet-controller dashboard and /metrics on {server.dashboard.url}",
              file=sys.stderr, flush=True)
    log.info("serving on port %d", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):   # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerfleet-controller",
        description="The layerfleet controller: registry, discovery, placement, deployment "
                    "and the client API over gRPC.")
    sub = parser.add_subparsers(dest="command")
    serve_p = sub.add_parser("serve", help="Run the daemon (the default).")
    token_p = sub.add_parser("token", help="Manage join tokens for agents off this LAN.")
    token_sub = token_p.add_subparsers(dest="token_command", required=True)
    create_p = token_sub.add_parser("create", help="Print a new join token.")
    create_p.add_argument("--label", default="", help="What the token is for.")
    for p in (parser, serve_p, create_p):
        p.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS,
                       help="State directory (default $STATE_DIRECTORY or "
                            "~/.local/state/layerfleet-controller).")
        p.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                       help="SQLite registry file (default STATE_DIR/controller.db).")
    for p in (parser, serve_p):
        p.add_argument("--listen", default=argparse.SUPPRESS,
                       help=f"gRPC address to listen on (default {DEFAULT_LISTEN}).")
        p.add_argument("--insecure", action="store_true", default=argparse.SUPPRESS,
                       help="Allow a non-loopback --listen without TLS (until mutual TLS "
                            "lands: only on a network you trust).")
        p.add_argument("--http", default=argparse.SUPPRESS, metavar="ADDR",
                       help=f"Address of the read-only web dashboard and Prometheus /metrics "
                            f"(default {DEFAULT_HTTP}; 'off' to disable).")
        p.add_argument("--http-insecure", action="store_true", default=argparse.SUPPRESS,
                       help="Allow a non-loopback --http: the dashboard has no "
                            "authentication yet (only on a network you trust).")
        p.add_argument("--no-mdns", action="store_true", default=argparse.SUPPRESS,
                       help="Do not browse mDNS for agents (joined agents still work).")
        p.add_argument("--cache-dir", type=Path, default=argparse.SUPPRESS,
                       help="Conversion cache (default STATE_DIR/shard-cache).")
        p.add_argument("--heartbeat", type=float, default=argparse.SUPPRESS,
                       help="Seconds between agent heartbeats (2).")
        p.add_argument("--missed-heartbeats", type=int, default=argparse.SUPPRESS,
                       help="Heartbeats a device may miss before it is marked down (3).")
        p.add_argument("--no-replan", action="store_true", default=argparse.SUPPRESS,
                       help="Do not move deployments when devices go down, come up or "
                            "change speed.")
        p.add_argument("--recalibrate", type=_seconds, metavar="SECONDS",
                       default=argparse.SUPPRESS,
                       help="Seconds between re-benchmarks of idle devices, whose measured "
                            "speed drives re-planning (default 300; 0: never).")
        p.add_argument("--restart-grace", type=_seconds, metavar="SECONDS",
                       default=argparse.SUPPRESS,
                       help="Seconds after a start before joined agents not heard from "
                            "since are marked down (default 30: their longest back-off).")
        p.add_argument("--log-level", default=argparse.SUPPRESS,
                       choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    logging.basicConfig(level=args.get("log_level", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state_dir = args.get("state_dir") or default_state_dir()
    if args.get("command") == "token":
        try:
            label = names.check_name("token label", args["label"]) if args.get("label") else ""
        except names.InvalidName as exc:
            print(f"layerfleet-controller: {exc}", file=sys.stderr)
            return 2
        files.private_dir(state_dir)
        registry = Registry(args.get("db") or state_dir / "controller.db")
        print(registry.create_token(label))
        registry.close()
        return 0
    settings = Settings(
        listen=args.get("listen", DEFAULT_LISTEN), state_dir=state_dir, db=args.get("db"),
        cache_dir=args.get("cache_dir"), insecure=args.get("insecure", False),
        mdns=not args.get("no_mdns", False),
        heartbeat_interval_s=args.get("heartbeat", 2.0),
        missed_heartbeats=args.get("missed_heartbeats", Settings.missed_heartbeats),
        replan=not args.get("no_replan", False),
        recalibrate_interval_s=args.get("recalibrate", Settings.recalibrate_interval_s),
        restart_grace_s=args.get("restart_grace", Settings.restart_grace_s),
        http="" if args.get("http") == "off" else args.get("http", DEFAULT_HTTP),
        http_insecure=args.get("http_insecure", False), http_optional="http" not in args)
    try:
        asyncio.run(serve(settings))
    except transport.InsecureListen as exc:
        print(f"layerfleet-controller: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"layerfleet-controller: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
