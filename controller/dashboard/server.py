"""The controller's HTTP port: the read-only dashboard, its live stream and /metrics.

aiohttp on the daemon's one event loop (no thread, no second process): the pages are static
files shipped in the package (no build step), the data is JSON from view.py, and live
updates are server-sent events: each registry event as it is recorded (EventBus wakes the
stream) and a fresh fleet snapshot at least every `state_interval_s` (telemetry changes
without events). Nothing here changes state: every route is a GET, and the plan preview is
the same dry run as the Plan RPC.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from layerfleet.controller import planner, wire
from layerfleet.controller.dashboard.access import Guard, check_listen, open_to_reachable
from layerfleet.controller.dashboard.view import event_view, fleet_view
from layerfleet.controller.errors import ApiError, not_found
from layerfleet.controller.events import EventBus
from layerfleet.controller.metrics import CONTENT_TYPE, ControllerMetrics
from layerfleet.controller.observed import Observed
from layerfleet.controller.registry import Registry

log = logging.getLogger(__name__)

STATIC = resources.files("layerfleet.controller.dashboard") / "static"
PAGES = {"/": "index.html", "/plan": "plan.html"}
ASSETS = {"dashboard.js": "text/javascript", "plan.js": "text/javascript",
          "common.js": "text/javascript", "style.css": "text/css"}
EVENTS_ON_LOAD = 50          # the feed starts with this many recent events
MIN_SNAPSHOT_GAP_S = 0.2     # a burst of events sends one snapshot, not one per event
# Everything the page loads comes from this origin; no inline script can run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Dashboard:
    def __init__(self, registry: Registry, events: EventBus, observed: Observed,
                 metrics: ControllerMetrics, *, listen: str, allow_remote: bool = False,
                 guard: Guard = open_to_reachable, controller_address: str = "",
                 state_interval_s: float = 1.0) -> None:
        check_listen(listen, allow_remote=allow_remote)
        self.registry = registry
        self.events = events
        self.observed = observed
        self.metrics = metrics
        self.listen = listen
        self.guard = guard
        self.controller_address = controller_address
        self.state_interval_s = state_interval_s
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guarded])
        for path in PAGES:
            app.router.add_get(path, self._page)
        app.router.add_get("/static/{name}", self._asset)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_get("/api/plan", self._plan)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> int:
        host, port = self.listen.rsplit(":", 1)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(f"cannot serve the dashboard on {self.listen}: "
                          f"{exc.strerror or exc}") from None
        self.port = int(self._runner.addresses[0][1])
        return self.port

    @property
    def url(self) -> str:
        host = self.listen.rsplit(":", 1)[0]
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        for task in list(self._streams):  # live streams never end on their own
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- middleware -----------------------------------------------------------------------

    @web.middleware
    async def _guarded(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        await self.guard(request)
        response = await handler(request)
        if not response.prepared:  # the stream sets its own before it starts
            response.headers.update(SECURITY_HEADERS)
        return response

    # -- pages ----------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        text = (STATIC / PAGES[request.path]).read_text(encoding="utf-8")
        return web.Response(text=text, content_type="text/html", charset="utf-8")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:  # a fixed list: no path from the request reaches the disk
            raise web.HTTPNotFound(text=f"no asset {name!r}")
        return web.Response(text=(STATIC / name).read_text(encoding="utf-8"),
                            content_type=ASSETS[name], charset="utf-8")

    # -- data -----------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return fleet_view(self.registry, self.observed, controller=self.controller_address)

    async def _state(self, request: web.Request) -> web.Response:
        return _json(self._snapshot())

    async def _events(self, request: web.Request) -> web.Response:
        after = _int_query(request, "after", default=self._recent_start())
        return _json([event_view(e) for e in self.registry.events(after_id=after, limit=500)])

    def _recent_start(self) -> int:
        latest = self.registry.db.execute("SELECT max(id) FROM events").fetchone()[0] or 0
        return max(int(latest) - EVENTS_ON_LOAD, 0)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: `fleet` (one registry event, with its id, so a reconnecting
        browser resumes after the last one it got) and `state` (the whole snapshot)."""
        last = request.headers.get("Last-Event-ID")
        after = int(last) if last and last.isdigit() else _int_query(
            request, "after", default=self._recent_start())
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "X-Accel-Buffering": "no", **SECURITY_HEADERS})
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        seen = self.events.version
        try:
            await response.write(b"retry: 2000\n\n")
            while True:
                for e in self.registry.events(after_id=after, limit=500):
                    after = e.id
                    await response.write(_sse("fleet", event_view(e), event_id=e.id))
                await response.write(_sse("state", self._snapshot()))
                seen = await self.events.wait(self.state_interval_s, seen=seen)
                await asyncio.sleep(MIN_SNAPSHOT_GAP_S)
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            if task is not None:
                self._streams.discard(task)
        return response

    async def _plan(self, request: web.Request) -> web.Response:
        """The Plan RPC's dry run for the plan preview page: candidates side by side."""
        query = request.query
        name = query.get("model", "")
        record = self.registry.model(name)
        try:
            if record is None:
                raise not_found("model", name, [m.name for m in self.registry.models()])
            try:
                sla_ms = float(query.get("sla_ms") or 0.0)
                top_k = int(query.get("top") or 3)
            except ValueError:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               "sla_ms must be a number and top a whole number") from None
            found, baselines, costs = planner.candidates(
                record, self.registry.devices(), self.registry.links(),
                objective=query.get("objective") or "latency", sla_ms=sla_ms,
                redundancy=query.get("redundancy") or "none", top_k=min(max(top_k, 1), 10))
        except ApiError as exc:
            return _json({"error": exc.message, "code": exc.code.name},
                         status=404 if exc.code == grpc.StatusCode.NOT_FOUND else 400)
        return _json({
            "model": record.name,
            "candidates": [_candidate(planner.candidate_pb(p, costs)) for p in found],
            "baselines": [_candidate(planner.candidate_pb(p, costs))
                          for p in baselines.values() if p]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type":
                                                                     CONTENT_TYPE})


def _candidate(candidate: Any) -> dict[str, Any]:
    """A Candidate in proto JSON, its objective as the word the page shows."""
    data = json_format.MessageToDict(candidate, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    data["objective"] = wire.OBJECTIVE.word(candidate.objective)
    return data


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, allow_nan=False), status=status,
                        content_type="application/json")


def _sse(kind: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, allow_nan=False)}\n\n".encode()


def _int_query(request: web.Request, key: str, default: int) -> int:
    value = request.query.get(key, "")
    if not value:
        return default
    if not value.isdigit():
        raise web.HTTPBadRequest(text=f"{key} must be a whole number")
    return int(value)
