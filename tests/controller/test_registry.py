"""The registry: real SQLite, migrations, atomic multi-row changes, tokens."""

from __future__ import annotations

import json
import sqlite3

import pytest
from layerfleet.controller.placement.model import Placement, Prediction, Stage, StagePrediction
from layerfleet.controller.registry import (
    MIGRATIONS,
    DeploymentPlan,
    DeploymentRecord,
    DeviceRecord,
    ModelRecord,
    PlanRequest,
    Registry,
    RegistryError,
    StageRecord,
    TensorInfo,
)
from layerfleet.v1 import controller_pb2


def _deployment(name: str = "d1") -> DeploymentRecord:
    return DeploymentRecord(
        name=name, model="m", state="active", plan=DeploymentPlan(route=name),
        stages=[StageRecord(name, i, i * 10, i * 10 + 10, f"pi-{i}", f"127.0.0.1:{5000 + i}",
                            shard_sha256="ab" * 32, shard_bytes=100) for i in range(3)])


def test_fresh_database_is_migrated_to_the_latest_schema(tmp_path):
    reg = Registry(tmp_path / "state.db")
    assert reg.schema_version == len(MIGRATIONS)
    assert {"devices", "links", "models", "deployments", "stages", "events", "tokens"} <= set(
        reg.db.table_names())


def test_a_database_from_a_newer_controller_is_refused_with_a_clear_message(tmp_path):
    Registry(tmp_path / "state.db").close()
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RegistryError, match="newer than this controller"):
        Registry(tmp_path / "state.db")


def test_state_survives_reopening(tmp_path):
    reg = Registry(tmp_path / "state.db")
    reg.upsert_device(DeviceRecord(id="pi-1", address="10.0.0.2:50051", cores=4),
                      event=("device.up", "joined"))
    reg.add_model(ModelRecord(name="m", digest="d" * 64, source="builtin:X", path="/x",
                              input_shape=[8, 8, 3], profile={"layers": []}))
    reg.save_deployment(_deployment())
    reg.close()

    again = Registry(tmp_path / "state.db")
    assert again.device("pi-1").cores == 4
    assert again.model("m").input_shape == [8, 8, 3]
    dep = again.deployment("d1")
    assert [s.device for s in dep.stages] == ["pi-0", "pi-1", "pi-2"]
    assert [e.kind for e in again.events()] == ["device.up", "model.registered"]


def test_a_failed_multi_row_change_leaves_the_previous_rows(tmp_path):
    reg = Registry(tmp_path / "state.db")
    reg.save_deployment(_deployment())
    broken = _deployment()
    broken.stages.append(broken.stages[0])  # duplicate primary key: the insert fails midway
    with pytest.raises(sqlite3.IntegrityError):
        reg.save_deployment(broken)
    dep = reg.deployment("d1")
    assert len(dep.stages) == 3


def test_tokens_are_checked_and_only_their_hash_is_stored(tmp_path):
    reg = Registry(tmp_path / "state.db")
    token = reg.create_token("rack 1")
    assert reg.check_token(token)
    assert not reg.check_token(token + "x")
    assert not reg.check_token("")
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # database and its WAL
    assert token.encode() not in stored


def _plan() -> DeploymentPlan:
    stage = StagePrediction(stage=0, compute_s=0.01, transfer_in_s=0.002, memory_bytes=1 << 20,
                            energy_j=0.05, link_bytes=4096, service_s=0.01)
    placement = Placement(
        stages=[Stage(0, 3, "pi-0", ("pi-2",)), Stage(3, 5, "pi-1")],
        prediction=Prediction(latency_s=0.02, throughput_rps=90.0, energy_j=0.1,
                              stages=[stage, stage], links=[("client", "pi-0", 4096, 0.001)]),
        strategy="dp", objective="throughput")
    return DeploymentPlan(
        request=PlanRequest(objective="throughput", sla_ms=250.0, redundancy="gnh"),
        placement=placement,
        candidate=controller_pb2.Candidate(strategy="dp", latency_s=0.02, throughput_rps=90.0),
        route="d1~2", generation=2, considered=("pi-0", "pi-1", "pi-2"),
        inputs=(TensorInfo("pixels", "float32", (1, 12, 12, 1)),),
        outputs=(TensorInfo("probs", "float32", (1, 10)),))


def test_a_deployment_plan_round_trips_through_the_registry(tmp_path):
    reg = Registry(tmp_path / "state.db")
    dep = _deployment()
    dep.plan = _plan()
    reg.save_deployment(dep)
    reg.close()
    loaded = Registry(tmp_path / "state.db").deployment("d1")
    assert loaded.plan == dep.plan
    assert loaded.route == "d1~2"
    assert DeploymentPlan.from_json(json.loads(json.dumps(_plan().to_json()))) == _plan()


def test_plan_rows_written_before_the_plan_had_a_type_still_load(tmp_path):
    """Rows as earlier controllers wrote them: before re-planning (no route, generation,
    considered or request) and after (every key, the placement as a dict)."""
    reg = Registry(tmp_path / "state.db")
    reg.save_deployment(_deployment("old"))
    reg.save_deployment(_deployment("newer"))
    before_replanning = {
        "candidate": {"strategy": "dp", "latency_s": 0.02},
        "inputs": [{"name": "pixels", "dtype": "float32", "shape": [1, 12, 12, 1]}],
        "outputs": [{"name": "probs", "dtype": "float32", "shape": [1, 10]}]}
    with_replanning = {**_plan().to_json(), "request": {"objective": "throughput",
                                                        "sla_ms": 250.0, "redundancy": "gnh"}}
    for name, plan in (("old", before_replanning), ("newer", with_replanning)):
        reg.db.execute("UPDATE deployments SET plan = ? WHERE name = ?",
                       [json.dumps(plan), name])
    old = reg.deployment("old")
    assert old.route == "old" and old.plan.generation == 0 and old.plan.placement is None
    assert old.plan.request == PlanRequest()   # what the re-planner assumed for such rows
    assert old.plan.inputs == (TensorInfo("pixels", "float32", (1, 12, 12, 1)),)
    assert old.plan.candidate.strategy == "dp" and old.plan.candidate.latency_s == 0.02
    assert reg.deployment("newer").plan == _plan()
