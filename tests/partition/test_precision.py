"""Quantised splits: cached by content hash plus precision (and the representative set for
int8), the precision in the manifest, and bad input refused with one clear error that
leaves an existing float32 split as it was."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from layerfleet.controller.partition import Analysis, Manifest, PartitionError, split_model
from layerfleet.controller.partition import split as split_module

from .models import digits, digits_cnn


@pytest.fixture(scope="module")
def analysis():
    return Analysis(digits_cnn())


def _files(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}


def test_precision_and_calibration_are_part_of_the_cache_key(analysis, tmp_path):
    cache = tmp_path / "cache"
    calib = {"digit": digits(40)}
    before = split_module.stats.conversions
    a = split_model(analysis.model, [3], tmp_path / "a", cache_dir=cache, analysis=analysis,
                    precision="int8", calibration=calib)
    assert split_module.stats.conversions - before == 2
    b = split_model(analysis.model, [3], tmp_path / "b", cache_dir=cache, analysis=analysis,
                    precision="int8", calibration=calib)
    assert split_module.stats.conversions - before == 2, "same precision and set: cached"
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    other = split_model(analysis.model, [3], tmp_path / "c", cache_dir=cache,
                        analysis=analysis, precision="int8",
                        calibration={"digit": digits(40, offset=40)})
    assert split_module.stats.conversions - before == 4, "another set: converted again"
    assert other.conversion["calibration"] != a.conversion["calibration"]
    fp16 = split_model(analysis.model, [3], tmp_path / "d", cache_dir=cache, analysis=analysis,
                       precision="fp16")
    assert split_module.stats.conversions - before == 6
    assert len({s.sha256 for s in a.shards + fp16.shards}) == 4
    loaded = Manifest.load(tmp_path / "a")
    assert loaded.precision == "int8"
    assert [s.precision for s in loaded.shards] == ["int8", "int8"]
    assert Manifest.load(tmp_path / "d").precision == "fp16"


def test_fp32_cache_keys_are_those_of_before_precisions(analysis):
    # A cache filled before this change still serves fp32 splits: the key is unchanged.
    assert split_module._cache_key("m", 0, 3, split_module.cache_options("fp32", None)) == \
        split_module._cache_key("m", 0, 3)


@pytest.mark.parametrize(("calibration", "message"), [
    ({"digit": digits(10)}, r"has 10 samples: at least 32 are needed \(200 or more"),
    ({"digit": digits(40)[..., 0]}, r"digit: shape \[40, 8, 8\], expected \[samples, 8, 8, 1\]"),
    ({"digit": (digits(40) * 16).astype(np.uint8)}, r"digit: dtype uint8, the model takes "
                                                    r"float32"),
    ({"digit": digits(40), "extra": digits(40)}, r"has arrays \['digit', 'extra'\]; the "
                                                 r"model's inputs are \['digit float32"),
    ({"digit": np.full((40, 8, 8, 1), np.nan, np.float32)}, "NaN or infinite"),
    (None, "precision int8 needs a representative data set"),
])
def test_a_bad_representative_set_is_refused_and_fp32_stays(analysis, tmp_path, shard_cache,
                                                            calibration, message):
    out = tmp_path / "split"
    split_model(analysis.model, [3], out, cache_dir=shard_cache, analysis=analysis)
    before = _files(out)
    with pytest.raises(PartitionError, match=message):
        split_model(analysis.model, [3], out, cache_dir=shard_cache, analysis=analysis,
                    precision="int8", calibration=calibration)
    assert _files(out) == before


def test_an_unknown_precision_is_named(analysis, tmp_path):
    with pytest.raises(PartitionError, match="unknown precision 'int4': choose one of fp32, "
                                             "fp16, dynamic, int8"):
        split_model(analysis.model, [3], tmp_path, analysis=analysis, precision="int4")


def test_an_op_without_an_int8_kernel_is_named_and_fp32_stays(tmp_path, shard_cache):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="digit")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.Lambda(keras.ops.sin, name="wave")(x)
    out = keras.layers.Dense(3, name="head")(keras.layers.Flatten(name="flat")(x))
    model = keras.Model(inp, out, name="wavy")
    analysis = Analysis(model)
    split_model(model, [2], tmp_path, cache_dir=shard_cache, analysis=analysis)
    before = _files(tmp_path)
    with pytest.raises(PartitionError, match=r"layers 0-1 \(conv..wave\) do not quantise to "
                                             r"int8: op SIN has no int8 kernel"):
        split_model(model, [2], tmp_path, cache_dir=shard_cache, analysis=analysis,
                    precision="int8", calibration={"digit": digits(32)})
    assert _files(tmp_path) == before
    # dynamic range keeps float activations, so the same model converts
    dynamic = split_model(model, [2], tmp_path / "dyn", cache_dir=shard_cache,
                          analysis=analysis, precision="dynamic")
    assert dynamic.precision == "dynamic"
