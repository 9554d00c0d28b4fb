"""The controller's state: one SQLite file through sqlite-utils.

Tables: devices, links, models, deployments, stages, events, tokens. The schema is built by
numbered migrations (PRAGMA user_version says which ran), so an old database upgrades in
place. Every change that touches several rows runs inside one `db.atomic()` transaction: a
controller killed mid-deploy leaves either the old rows or the new ones, never half.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import sqlite_utils
from google.protobuf import json_format
from layerfleet.agent import files
from layerfleet.controller import wire
from layerfleet.controller.placement.model import Placement
from layerfleet.controller.states import (
    DeploymentState,
    DeviceState,
    FoundBy,
    Objective,
    Redundancy,
)
from layerfleet.v1 import controller_pb2


@dataclass(slots=True)
class DeviceRecord:
    id: str
    address: str
    hostname: str = ""
    arch: str = ""
    cores: int = 0
    memory_bytes: int = 0
    runtime: str = ""
    version: str = ""
    state: DeviceState = "up"
    found_by: FoundBy = "static"
    flops_per_s: float = 0.0   # calibrated; 0 until measured
    link_bandwidth_Bps: float = 0.0
    link_rtt_s: float = 0.0
    last_seen: float = 0.0
    power_w: float = 0.0
    energy_method: str = ""
    cpu_percent: float = 0.0
    memory_available: int = 0
    idle_w: float = 2.7        # power model defaults: Raspberry Pi 4 (docs/agent-telemetry.md)
    busy_w: float = 6.4
    temperature_c: float | None = None  # last reported; None when the board has no sensor
    joules_total: float = 0.0  # energy the agent has counted since it started


@dataclass(slots=True)
class Heartbeat:
    """What one heartbeat changes in a device's row."""

    device_id: str
    last_seen: float
    power_w: float = 0.0
    energy_method: str = ""
    cpu_percent: float = 0.0
    memory_available: int = 0
    temperature_c: float | None = None
    joules_total: float = 0.0


@dataclass(slots=True)
class ModelRecord:
    name: str
    digest: str
    source: str
    path: str                  # the stored model file the partitioner loads
    input_shape: list[int] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    layers: int = 0
    flops: int = 0
    param_bytes: int = 0
    created_at: float = 0.0


@dataclass(slots=True)
class StageRecord:
    deployment: str
    stage: int
    start: int
    stop: int
    device: str
    address: str
    replicas: list[str] = field(default_factory=list)   # device ids
    shard_sha256: str = ""
    shard_bytes: int = 0

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device serving this stage: its own, then its replicas."""
        return (self.device, *self.replicas)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output of a deployed model, as its shards expect it."""

    name: str
    dtype: str                 # numpy's name: "float32"
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What the user asked for when deploying; every re-plan asks for it again."""

    objective: Objective = "latency"
    sla_ms: float = 0.0        # 0: none
    redundancy: Redundancy = "none"


@dataclass(frozen=True, slots=True)
class DeploymentPlan:
    """What a deployment runs and why: stored as JSON in `deployments.plan`, read and
    written only by to_json/from_json below (rows from before a key existed get the
    default beside it)."""

    request: PlanRequest = PlanRequest()
    placement: Placement | None = None   # None only in rows that predate stored placements
    candidate: controller_pb2.Candidate = field(default_factory=controller_pb2.Candidate)
    route: str = ""            # the chain's name on the agents; "": the deployment's name
    generation: int = 0        # +1 per re-plan (each gets a new route name)
    considered: tuple[str, ...] = ()   # devices up and calibrated when it was planned
    inputs: tuple[TensorInfo, ...] = ()    # known once the shards are converted
    outputs: tuple[TensorInfo, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "request": asdict(self.request),
            "placement": self.placement.to_dict() if self.placement is not None else None,
            "candidate": json_format.MessageToDict(self.candidate,
                                                   preserving_proto_field_name=True),
            "route": self.route, "generation": self.generation,
            "considered": list(self.considered),
            "inputs": [_tensor_json(t) for t in self.inputs],
            "outputs": [_tensor_json(t) for t in self.outputs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeploymentPlan:
        request = data.get("request") or {}
        placement = data.get("placement")
        candidate = dict(data.get("candidate") or {})
        if "objective" in candidate:   # a word in rows written before the enum
            candidate["objective"] = wire.OBJECTIVE.normalize_json(candidate["objective"])
        return cls(
            request=PlanRequest(objective=str(request.get("objective", "latency")),
                                sla_ms=float(request.get("sla_ms", 0.0)),
                                redundancy=str(request.get("redundancy", "none"))),
            placement=Placement.from_dict(placement) if placement else None,
            candidate=json_format.ParseDict(candidate, controller_pb2.Candidate(),
                                            ignore_unknown_fields=True),
            route=str(data.get("route", "")), generation=int(data.get("generation", 0)),
            considered=tuple(data.get("considered", ())),
            inputs=tuple(_tensor_info(t) for t in data.get("inputs", ())),
            outputs=tuple(_tensor_info(t) for t in data.get("outputs", ())))


def _tensor_json(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


def _tensor_info(data: dict[str, Any]) -> TensorInfo:
    return TensorInfo(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]))


@dataclass(slots=True)
class DeploymentRecord:
    name: str
    model: str
    state: DeploymentState
    plan: DeploymentPlan = field(default_factory=DeploymentPlan)
    manifest_dir: str = ""
    error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def route(self) -> str:
        """The name the agents know this deployment's current chain by (a re-plan makes a
        new one, so the old and new chains can serve side by side during the switch)."""
        return self.plan.route or self.name


@dataclass(slots=True)
class EventRecord:
    id: int
    time: float
    kind: str
    subject: str
    message: str


_JSON_FIELDS = {"input_shape", "profile", "inputs", "outputs", "plan", "replicas"}
# Columns holding a typed value: how it becomes JSON and back (the rest are plain JSON).
_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "plan": (DeploymentPlan.to_json, DeploymentPlan.from_json)}


def _to_row(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    row = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if f.name in _CODECS:
            value = _CODECS[f.name][0](value)
        row[f.name] = json.dumps(value) if f.name in _JSON_FIELDS else value
    return row


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _from_row(cls: type, row: dict[str, Any]) -> Any:
    names = _field_names(cls)  # (cached: ListDevices builds 10,000 of these)
    kwargs = {k: (json.loads(v) if k in _JSON_FIELDS and isinstance(v, str) else v)
              for k, v in row.items() if k in names}
    for k in _CODECS.keys() & kwargs.keys():
        kwargs[k] = _CODECS[k][1](kwargs[k] or {})
    return cls(**kwargs)


def _v1(db: sqlite_utils.Database) -> None:
    db["devices"].create({f.name: _sql_type(f.type) for f in fields(DeviceRecord)}, pk="id")
    db["links"].create({"a": str, "b": str, "bandwidth_Bps": float, "rtt_s": float,
                        "measured_at": float}, pk=("a", "b"))
    db["models"].create({f.name: _sql_type(f.type) for f in fields(ModelRecord)}, pk="name")
    db["deployments"].create({f.name: _sql_type(f.type) for f in fields(DeploymentRecord)
                              if f.name != "stages"}, pk="name")
    db["stages"].create({f.name: _sql_type(f.type) for f in fields(StageRecord)},
                        pk=("deployment", "stage"),
                        foreign_keys=[("deployment", "deployments", "name")])
    db["events"].create({"id": int, "time": float, "kind": str, "subject": str,
                         "message": str}, pk="id")
    db["events"].create_index(["subject"])
    db["tokens"].create({"sha256": str, "label": str, "created_at": float}, pk="sha256")


def _sql_type(annotation: Any) -> type:
    text = str(annotation)
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str


def _v2(db: sqlite_utils.Database) -> None:
    # Telemetry the dashboard and /metrics show beside power: temperature and energy. A new
    # database already has them (_v1 builds tables from today's dataclasses).
    columns = db["devices"].columns_dict
    if "temperature_c" not in columns:
        db["devices"].add_column("temperature_c", float)
    if "joules_total" not in columns:
        db["devices"].add_column("joules_total", float, not_null_default=0.0)


# Append only: migration N upgrades a version N-1 database. Never edit a released one.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2]


class RegistryError(RuntimeError):
    pass


class Registry:
    """All reads and writes of controller state. Single-threaded use (the event loop)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Device records and token hashes: the owner's only (SQLite gives the -wal and
        # -shm files the database file's mode).
        files.private_file(self.path)
        conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        # Called with each event as it is recorded (the daemon's EventBus wakes its readers).
        self.listeners: list[Callable[[EventRecord], None]] = []
        # +1 on every write the planner and the re-planner depend on (devices, links,
        # deployments); heartbeats' telemetry does not count. Caches compare it.
        self.changes = 0
        self.migrate()

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise RegistryError(
                f"{self.path} has schema version {version}, newer than this controller "
                f"understands ({len(MIGRATIONS)}): upgrade layerfleet")
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.db.atomic():
                migration(self.db)
                self.db.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        self.db.close()

    # -- events ---------------------------------------------------------------------------

    def add_event(self, kind: str, subject: str, message: str) -> EventRecord:
        with self.db.atomic():
            return self._add_event(kind, subject, message)

    def _add_event(self, kind: str, subject: str, message: str) -> EventRecord:
        now = time.time()
        table = self.db["events"]
        table.insert({"time": now, "kind": kind, "subject": subject, "message": message})
        event = EventRecord(int(table.last_pk), now, kind, subject, message)
        for listener in self.listeners:
            listener(event)
        return event

    def events(self, after_id: int = 0, limit: int = 1000) -> list[EventRecord]:
        rows = self.db["events"].rows_where("id > ?", [after_id], order_by="id", limit=limit)
        return [EventRecord(**r) for r in rows]

    # -- devices --------------------------------------------------------------------------

    def upsert_device(self, device: DeviceRecord, event: tuple[str, str] | None = None) -> None:
        self.changes += 1
        with self.db.atomic():
            self.db["devices"].upsert(_to_row(device), pk="id")
            if event:
                self._add_event(event[0], device.id, event[1])

    def device(self, device_id: str) -> DeviceRecord | None:
        try:
            return _from_row(DeviceRecord, self.db["devices"].get(device_id))
        except sqlite_utils.db.NotFoundError:
            return None

    def devices(self) -> list[DeviceRecord]:
        return [_from_row(DeviceRecord, r) for r in self.db["devices"].rows_where(order_by="id")]

    # Heartbeats arrive at (devices / interval) per second: 5,000/s from 10,000 agents. One
    # transaction (and one fsync) each would cap the controller near a few hundred; these
    # read one column by primary key and write a whole batch in one transaction.

    def device_state(self, device_id: str) -> str | None:
        """The device's state (None: unknown), without building its record."""
        row = self.db.conn.execute("SELECT state FROM devices WHERE id = ?",
                                   [device_id]).fetchone()
        return row[0] if row else None

    def record_heartbeats(self, beats: list[Heartbeat]) -> None:
        """Last-seen time and telemetry of many devices, in one transaction."""
        if not beats:
            return
        with self.db.atomic():
            self.db.conn.executemany(
                "UPDATE devices SET last_seen = ?, power_w = ?, energy_method = ?, "
                "cpu_percent = ?, memory_available = ?, temperature_c = ?, joules_total = ? "
                "WHERE id = ?",
                [(b.last_seen, b.power_w, b.energy_method, b.cpu_percent, b.memory_available,
                  b.temperature_c, b.joules_total, b.device_id) for b in beats])

    # At 10,000 devices a whole-table read builds 10,000 records (~0.1 s): the hot paths
    # read only the rows and columns they need.

    def device_states(self, ids: list[str]) -> dict[str, str]:
        """The state of each of `ids` that is known (a deployment's devices, say)."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        rows = self.db.conn.execute(
            f"SELECT id, state FROM devices WHERE id IN ({', '.join('?' * len(ids))})", ids)
        return dict(rows.fetchall())

    def devices_up(self, silent_since: float | None = None) -> list[DeviceRecord]:
        """Devices that are up; with silent_since, only those the liveness sweep must look
        at: the ones it probes (not joined) and joined ones last seen before that time."""
        where, params = "state = 'up'", []
        if silent_since is not None:
            where += " AND (found_by != 'join' OR last_seen < ?)"
            params = [silent_since]
        return [_from_row(DeviceRecord, r)
                for r in self.db["devices"].rows_where(where, params, order_by="id")]

    def set_device_state(self, device_id: str, state: str, message: str) -> None:
        self.changes += 1
        with self.db.atomic():
            self.db["devices"].update(device_id, {"state": state})
            self._add_event(f"device.{state}", device_id, message)

    def set_link(self, a: str, b: str, bandwidth_Bps: float, rtt_s: float) -> None:
        self.changes += 1
        self.db["links"].upsert({"a": a, "b": b, "bandwidth_Bps": bandwidth_Bps,
                                 "rtt_s": rtt_s, "measured_at": time.time()}, pk=("a", "b"))

    def links(self) -> list[dict[str, Any]]:
        return list(self.db["links"].rows)

    # -- models ---------------------------------------------------------------------------

    def add_model(self, model: ModelRecord) -> None:
        with self.db.atomic():
            self.db["models"].upsert(_to_row(model), pk="name")
            self._add_event("model.registered", model.name,
                            f"{model.source}, {model.layers} layers, digest {model.digest[:12]}")

    def model(self, name: str) -> ModelRecord | None:
        try:
            return _from_row(ModelRecord, self.db["models"].get(name))
        except sqlite_utils.db.NotFoundError:
            return None

    def models(self) -> list[ModelRecord]:
        return [_from_row(ModelRecord, r) for r in self.db["models"].rows_where(order_by="name")]

    # -- deployments ----------------------------------------------------------------------

    def save_deployment(self, dep: DeploymentRecord, event: tuple[str, str] | None = None) -> None:
        """Write a deployment and all its stages in one transaction."""
        self.changes += 1
        dep.updated_at = time.time()
        dep.created_at = dep.created_at or dep.updated_at
        with self.db.atomic():
            self.db["deployments"].upsert(_to_row(dep, skip=("stages",)), pk="name")
            self.db.execute("DELETE FROM stages WHERE deployment = ?", [dep.name])
            if dep.stages:
                self.db["stages"].insert_all(_to_row(s) for s in dep.stages)
            if event:
                self._add_event(event[0], dep.name, event[1])

    def set_deployment_state(self, name: str, state: str, error: str = "",
                             event: tuple[str, str] | None = None) -> None:
        self.changes += 1
        with self.db.atomic():
            self.db["deployments"].update(name, {"state": state, "error": error,
                                                 "updated_at": time.time()})
            if event:
                self._add_event(event[0], name, event[1])

    def deployment(self, name: str) -> DeploymentRecord | None:
        try:
            dep = _from_row(DeploymentRecord, self.db["deployments"].get(name))
        except sqlite_utils.db.NotFoundError:
            return None
        dep.stages = [_from_row(StageRecord, r) for r in
                      self.db["stages"].rows_where("deployment = ?", [name], order_by="stage")]
        return dep

    def deployments(self, include_undeployed: bool = False) -> list[DeploymentRecord]:
        names = [r["name"] for r in self.db["deployments"].rows_where(
            None if include_undeployed else "state != 'undeployed'", order_by="name")]
        return [d for d in (self.deployment(n) for n in names) if d is not None]

    # -- join tokens ----------------------------------------------------------------------

    def create_token(self, label: str = "") -> str:
        """A new join token. Only its hash is stored: the database leaking leaks no token."""
        token = "lf_" + secrets.token_urlsafe(24)
        self.db["tokens"].insert({"sha256": _token_hash(token), "label": label,
                                  "created_at": time.time()})
        return token

    def check_token(self, token: str) -> bool:
        if not token:
            return False
        return self.db.conn.execute("SELECT 1 FROM tokens WHERE sha256 = ?",
                                    [_token_hash(token)]).fetchone() is not None

    def tokens(self) -> Iterator[dict[str, Any]]:
        return self.db["tokens"].rows


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def as_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)
