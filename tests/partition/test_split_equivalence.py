"""Splitting changes nothing: every split's outputs equal the unsplit LiteRT model's
(float32, max abs difference <= 1e-5) on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from layerfleet.agent.runtime import ShardRunner
from layerfleet.controller.partition import Analysis, balanced_cuts, convert_whole, split_model
from layerfleet.controller.partition.local import run_local

from .models import multi_io_model, random_inputs, sequential_model

TOLERANCE = 1e-5


def _reference(analysis, tmp_path, cache):
    return ShardRunner(convert_whole(analysis.model, tmp_path / "whole.tflite",
                                     cache_dir=cache, analysis=analysis))


def _assert_split_matches(analysis, cuts, reference, tmp_path, cache):
    out = tmp_path / f"split-{'-'.join(map(str, cuts)) or 'none'}"
    manifest = split_model(analysis.model, cuts, out, cache_dir=cache, analysis=analysis)
    assert [s.start for s in manifest.shards] == [0, *cuts]
    inputs = random_inputs(manifest.inputs)
    expected = reference.run(inputs)
    got = run_local(out, inputs)
    assert set(got) == set(expected) == {t.name for t in manifest.outputs}
    for name in expected:
        assert got[name].shape == expected[name].shape
        assert np.max(np.abs(got[name] - expected[name])) <= TOLERANCE, (name, cuts)
    return manifest


def _check_chain(manifest):
    for before, after in zip(manifest.shards, manifest.shards[1:]):
        assert [t.name for t in before.outputs] == [t.name for t in after.inputs]
    assert manifest.shards[0].inputs == manifest.inputs
    assert manifest.shards[-1].outputs == manifest.outputs


@pytest.fixture(scope="module")
def multi_io():
    return Analysis(multi_io_model())


@pytest.fixture(scope="module")
def sequential():
    return Analysis(sequential_model())


def test_the_whole_model_converted_as_one_segment_matches_keras(multi_io, tmp_path, shard_cache):
    reference = _reference(multi_io, tmp_path, shard_cache)
    inputs = random_inputs(reference.inputs)
    keras_out = multi_io.model([inputs["image"], inputs["meta"]])
    lite = reference.run(inputs)
    assert np.max(np.abs(lite["classes"] - np.asarray(keras_out[0]))) <= TOLERANCE
    assert np.max(np.abs(lite["early"] - np.asarray(keras_out[1]))) <= TOLERANCE


def test_multi_input_multi_output_model_splits_exactly_at_every_cut(multi_io, tmp_path,
                                                                     shard_cache):
    reference = _reference(multi_io, tmp_path, shard_cache)
    for cut in range(1, multi_io.graph.n):
        manifest = _assert_split_matches(multi_io, [cut], reference, tmp_path, shard_cache)
        _check_chain(manifest)


def test_an_output_produced_early_is_carried_through_every_later_shard(multi_io, tmp_path,
                                                                       shard_cache):
    graph = multi_io.graph
    early = next(e for e in graph.outputs if e.name == "early")
    later_cuts = [p for p in range(early.producer + 1, graph.n)]
    assert later_cuts, "the test model must produce 'early' before its last layer"
    for p in later_cuts:
        assert "early" in [e.name for e in graph.crossing(p)]


def test_cuts_inside_a_skip_connection_are_crossed_by_two_tensors(multi_io):
    graph = multi_io.graph
    stem = next(e for e in graph.edges.values() if e.name == "stem")
    inside = [p for p in range(stem.producer + 1, stem.last_use + 1)]
    assert inside
    assert all(len(graph.crossing(p)) >= 2 for p in inside)


@pytest.mark.parametrize("shards", [2, 3, 5])
def test_multi_io_model_in_n_shards(multi_io, tmp_path, shard_cache, shards):
    reference = _reference(multi_io, tmp_path, shard_cache)
    cuts = balanced_cuts(multi_io.profile, shards)
    assert len(cuts) == shards - 1
    _check_chain(_assert_split_matches(multi_io, cuts, reference, tmp_path, shard_cache))


def test_sequential_model_splits_exactly_at_every_cut(sequential, tmp_path, shard_cache):
    reference = _reference(sequential, tmp_path, shard_cache)
    for cut in range(1, sequential.graph.n):
        _assert_split_matches(sequential, [cut], reference, tmp_path, shard_cache)
    for shards in (3, 5):
        _assert_split_matches(sequential, balanced_cuts(sequential.profile, shards), reference,
                              tmp_path, shard_cache)


def _application(name: str, **kwargs):
    import keras

    keras.utils.set_random_seed(0)
    return getattr(keras.applications, name)(weights=None, **kwargs)


# keras.applications models, at small input sizes to keep conversion time down; the
# architecture (skips, concatenations, depthwise convolutions) is what matters here.
APPLICATIONS = {
    "MobileNetV2": dict(input_shape=(96, 96, 3), alpha=0.35),
    "ResNet50": dict(input_shape=(64, 64, 3)),
    "DenseNet121": dict(input_shape=(64, 64, 3)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_keras_applications_split_into_2_3_and_5_shards_exactly(name, tmp_path, shard_cache):
    analysis = Analysis(_application(name, **APPLICATIONS[name]))
    reference = _reference(analysis, tmp_path, shard_cache)
    for shards in (2, 3, 5):
        manifest = _assert_split_matches(analysis, balanced_cuts(analysis.profile, shards),
                                         reference, tmp_path, shard_cache)
        _check_chain(manifest)
