"""The conversion cache, the manifest and the cost profile."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from layerfleet.controller.partition import Analysis, Manifest, PartitionError, split_model
from layerfleet.controller.partition import split as split_module
from layerfleet.controller.partition.profile import ModelProfile
from layerfleet.controller.partition.profiler import layer_flops

from .models import multi_io_model


@pytest.fixture(scope="module")
def analysis():
    return Analysis(multi_io_model())


def test_a_repeated_split_converts_nothing(analysis, tmp_path):
    cache = tmp_path / "cache"
    split_model(analysis.model, [3, 6], tmp_path / "a", cache_dir=cache, analysis=analysis)
    before = split_module.stats.conversions
    again = split_model(analysis.model, [3, 6], tmp_path / "b", cache_dir=cache,
                        analysis=analysis)
    assert split_module.stats.conversions == before
    assert [s.sha256 for s in again.shards] == [
        s.sha256 for s in Manifest.load(tmp_path / "a").shards]


def test_the_cache_is_keyed_by_model_content(tmp_path):
    cache = tmp_path / "cache"
    first = Analysis(multi_io_model())
    split_model(first.model, [4], tmp_path / "a", cache_dir=cache, analysis=first)
    other = multi_io_model()
    other.set_weights([w * 2 for w in other.get_weights()])
    second = Analysis(other)
    assert second.digest != first.digest
    before = split_module.stats.conversions
    split_model(other, [4], tmp_path / "b", cache_dir=cache, analysis=second)
    assert split_module.stats.conversions == before + 2


def test_manifest_round_trips_and_records_profile_numbers(analysis, tmp_path, shard_cache):
    written = split_model(analysis.model, [5], tmp_path, cache_dir=shard_cache,
                          analysis=analysis)
    loaded = Manifest.load(tmp_path)
    assert json.dumps(loaded.to_dict()) == json.dumps(written.to_dict())
    assert sum(s.flops for s in loaded.shards) == sum(l.flops for l in loaded.profile.layers)
    assert loaded.shards[0].inputs[0].shape == [1, 12, 12, 3]


def test_a_tampered_shard_is_refused_on_load(analysis, tmp_path, shard_cache):
    manifest = split_model(analysis.model, [5], tmp_path, cache_dir=shard_cache,
                           analysis=analysis)
    path = tmp_path / manifest.shards[1].file
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(PartitionError, match="does not match"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize("cuts", [[0], [99], [3, 3]])
def test_bad_cuts_are_refused_with_the_valid_range(analysis, tmp_path, cuts):
    with pytest.raises(PartitionError, match="out of range|repeat"):
        split_model(analysis.model, cuts, tmp_path, analysis=analysis)


def test_profile_round_trips_through_json(analysis):
    profile = analysis.profile
    assert ModelProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    assert profile.cut_bytes(0) == 12 * 12 * 3 * 4 + 6 * 4          # both inputs
    assert profile.cut_bytes(profile.n) == (10 + 4) * 4              # both outputs


def test_conv_and_dense_flops_follow_the_documented_formula():
    import keras

    conv = keras.layers.Conv2D(8, 3, padding="same")
    assert layer_flops(conv, [(None, 12, 12, 3)], [(None, 12, 12, 8)]) == 2 * 12 * 12 * 8 * 9 * 3
    dense = keras.layers.Dense(10)
    assert layer_flops(dense, [(None, 16)], [(None, 10)]) == 2 * 16 * 10
    assert layer_flops(keras.layers.Flatten(), [(None, 4, 4)], [(None, 16)]) == 0


def test_a_subclassed_model_gets_a_clear_error():
    import keras

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(keras.ops.zeros((1, 4)))
    with pytest.raises(PartitionError, match="subclassed"):
        Analysis(net)


def test_manifest_and_run_local_import_without_tensorflow():
    code = ("import sys, layerfleet.controller.partition.local, "
            "layerfleet.controller.partition.manifest, layerfleet.controller.partition; "
            "from layerfleet.controller.partition import Manifest, run_local; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
