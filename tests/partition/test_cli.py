"""`layerfleet inspect`, `split` and `run-local` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from layerfleet.agent.runtime import ShardRunner
from layerfleet.controller.partition import convert_whole

from .models import multi_io_model, sequential_model

LAYERFLEET = str(Path(sys.executable).parent / "layerfleet")


def run(*args: str, env_cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if env_cache is not None:
        env["LAYERFLEET_CACHE"] = str(env_cache)
    return subprocess.run([LAYERFLEET, *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    seq, multi = sequential_model(), multi_io_model()
    seq.save(root / "seq.keras")
    multi.save(root / "multi.keras")
    return root


def test_inspect_prints_layers_and_cut_bytes(model_files):
    result = run("inspect", str(model_files / "seq.keras"))
    assert result.returncode == 0, result.stderr
    assert "conv2d" in result.stdout.lower()
    assert "cut positions 1..8" in result.stdout


def test_inspect_json_is_the_profile(model_files):
    result = run("inspect", str(model_files / "multi.keras"), "--json")
    profile = json.loads(result.stdout)
    assert len(profile["cuts"]) == len(profile["layers"]) + 1
    assert {l["name"] for l in profile["layers"]} >= {"stem", "skip", "early", "classes"}


def test_split_then_run_local_equals_the_whole_model(model_files, tmp_path, shard_cache):
    result = run("split", str(model_files / "seq.keras"), "--shards", "3", "--out",
                 str(tmp_path / "out"), env_cache=shard_cache)
    assert result.returncode == 0, result.stderr
    assert "wrote 3 shards" in result.stdout
    x = np.random.default_rng(3).standard_normal((1, 10, 10, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run("run-local", str(tmp_path / "out"), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy"))
    assert result.returncode == 0, result.stderr
    import keras

    model = keras.models.load_model(model_files / "seq.keras")
    whole = ShardRunner(convert_whole(model, tmp_path / "w.tflite", cache_dir=shard_cache))
    expected = next(iter(whole.run({whole.inputs[0].name: x}).values()))
    assert np.max(np.abs(np.load(tmp_path / "y.npy") - expected)) <= 1e-5


def test_split_with_explicit_cuts_and_npz_for_several_inputs(model_files, tmp_path,
                                                             shard_cache):
    result = run("split", str(model_files / "multi.keras"), "--cuts", "2,5", "--out",
                 str(tmp_path / "out"), env_cache=shard_cache)
    assert result.returncode == 0, result.stderr
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", image=rng.random((1, 12, 12, 3), dtype=np.float32),
             meta=rng.random((1, 6), dtype=np.float32))
    result = run("run-local", str(tmp_path / "out"), "--input", str(tmp_path / "x.npz"),
                 "--output", str(tmp_path / "y.npz"))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "y.npz") as y:
        assert sorted(y.files) == ["classes", "early"]
        assert y["classes"].shape == (1, 10)


@pytest.fixture(scope="module")
def split_dir(model_files, tmp_path_factory, shard_cache):
    out = tmp_path_factory.mktemp("split")
    result = run("split", str(model_files / "seq.keras"), "--cuts", "4", "--out", str(out),
                 env_cache=shard_cache)
    assert result.returncode == 0, result.stderr
    return out


def _bad(args, tmp_path):
    (tmp_path / "text.keras").write_text("not a model")
    (tmp_path / "text.h5").write_text("not a model")
    np.save(tmp_path / "wrong_shape.npy", np.zeros((1, 9, 9, 1), np.float32))
    np.save(tmp_path / "wrong_dtype.npy", np.zeros((1, 10, 10, 1), np.float64))
    return run(*[a.format(tmp=tmp_path) for a in args])


@pytest.mark.parametrize("args, message", [
    (["inspect", "{tmp}/missing.keras"], "no such file"),
    (["inspect", "NotAnArchitecture"], "not a file nor a keras.applications"),
    (["split", "{tmp}/missing.keras", "--shards", "2", "--out", "{tmp}/o"], "no such file"),
    (["run-local", "{tmp}/nowhere", "--input", "{tmp}/wrong_shape.npy"], "no manifest.json"),
    (["inspect", "{tmp}/text.keras"], "not a .keras file: a .keras file is a zip archive"),
    (["inspect", "{tmp}/text.h5"], "not an .h5 file: no HDF5 signature"),
])
def test_bad_input_is_one_line_on_stderr(args, message, tmp_path):
    result = _bad(args, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_cut_out_of_range_is_refused(model_files, tmp_path):
    result = run("split", str(model_files / "seq.keras"), "--cuts", "42", "--out",
                 str(tmp_path / "o"))
    assert result.returncode != 0
    assert "cut 42 is out of range" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name, expected", [("wrong_shape.npy", "expected float32[1, 10, 10, 1]"),
                                            ("wrong_dtype.npy", "received float64")])
def test_run_local_names_expected_and_received_input(split_dir, tmp_path, name, expected):
    result = _bad(["run-local", str(split_dir), "--input", "{tmp}/" + name], tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
