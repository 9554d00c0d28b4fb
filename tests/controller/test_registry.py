"""The registry: real SQLite, migrations, atomic multi-row changes, tokens."""

from __future__ import annotations

import sqlite3

import pytest
from layerfleet.controller.registry import (
    MIGRATIONS,
    DeploymentRecord,
    DeviceRecord,
    ModelRecord,
    Registry,
    RegistryError,
    StageRecord,
)


def _deployment(name: str = "d1") -> DeploymentRecord:
    return DeploymentRecord(
        name=name, model="m", state="active", plan={"latency_s": 0.1},
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
