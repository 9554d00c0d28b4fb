"""Activation encodings (agent/codecs.py) decode within the error they state, on real
activations (digits through a small convolution) and on the awkward cases: all zeros,
values beyond float16, NaN, an int8 shard's own output."""

from __future__ import annotations

import numpy as np
import pytest
from layerfleet.agent import codecs, tensors
from layerfleet.agent.codecs import Affine, WireFormat
from layerfleet.v1 import tensor_pb2


def _activation() -> np.ndarray:
    """A real activation: sklearn digits through a random 3x3 convolution and a ReLU."""
    from sklearn.datasets import load_digits

    images = (load_digits().images[:64] / 16.0).astype(np.float32)
    kernel = np.random.default_rng(0).normal(0, 1, (3, 3)).astype(np.float32)
    out = sum(kernel[i, j] * images[:, i:i + 6, j:j + 6] for i in range(3) for j in range(3))
    return np.maximum(out, 0).astype(np.float32)


def _round_trip(x: np.ndarray, fmt: WireFormat, want=np.float32, want_affine=None,
                affine=None) -> tuple[np.ndarray, codecs.Encoded]:
    e = codecs.encode(x, fmt, affine)
    # through a real wire tensor, as gRPC carries it
    wire = tensors.encode_payload("t", e.payload, e.dtype, e.shape, e.encoding)
    back = tensor_pb2.Tensor.FromString(wire.SerializeToString())
    payload = tensors.decode(back)
    return codecs.to_contract({"t": payload}, codecs.encoded_headers([back]),
                              {"t": (np.dtype(want), want_affine)})["t"], e


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_fp16_halves_the_bytes_within_its_relative_error(compression):
    x = _activation()
    got, e = _round_trip(x, WireFormat("fp16", compression))
    assert got.dtype == np.float32 and got.shape == x.shape
    assert e.dtype == np.float16
    big = np.abs(x) >= 2.0 ** -14
    assert np.all(np.abs(got - x)[big] <= codecs.FP16_RELATIVE * np.abs(x[big]))
    assert np.all(np.abs(got - x)[~big] <= codecs.FP16_ABSOLUTE)
    assert e.payload.nbytes <= x.nbytes / 2


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_int8_quarters_the_bytes_within_half_a_step(compression):
    x = _activation()
    got, e = _round_trip(x, WireFormat("int8", compression))
    scale = e.encoding.scale
    assert scale == pytest.approx((x.max() - min(x.min(), 0)) / 255)
    assert np.max(np.abs(got - x)) <= scale / 2 * (1 + 1e-5) + 1e-7
    assert e.payload.nbytes <= x.nbytes / 4
    assert np.all(got[x == 0] == 0), "zero stays exact (it is inside the range)"


def test_compression_is_kept_only_when_it_pays():
    sparse = np.zeros((64, 64), np.float32)
    sparse[::7, ::5] = 1.5
    e = codecs.encode(sparse, WireFormat("fp32", "lz4"))
    assert e.encoding.compression == tensor_pb2.LZ4
    assert e.payload.nbytes < sparse.nbytes / 10
    noise = np.random.default_rng(1).integers(0, 256, 64 * 64 * 4, np.uint8).view(np.float32)
    e = codecs.encode(noise, WireFormat("fp32", "zstd"))
    assert e.encoding.compression == tensor_pb2.COMPRESSION_NONE, "random bits do not pack"
    assert e.payload.nbytes == noise.nbytes


def test_values_beyond_float16_and_non_finite_ones_travel_as_float32():
    huge = np.array([1.0, 1e6], np.float32)
    got, e = _round_trip(huge, WireFormat("fp16"))
    assert e.dtype == np.float32
    np.testing.assert_array_equal(got, huge)
    nan = np.array([1.0, np.nan], np.float32)
    got, e = _round_trip(nan, WireFormat("int8"))
    assert e.dtype == np.float32 and not e.encoding.scale
    np.testing.assert_array_equal(got, nan)


def test_an_int8_shard_output_crosses_as_it_is_and_lands_on_the_next_shards_map():
    q = np.random.default_rng(2).integers(-128, 128, (4, 8), dtype=np.int8)
    mine = Affine(0.05, -3)
    got, e = _round_trip(q, WireFormat("int8"), want=np.int8, want_affine=Affine(0.05, -3),
                         affine=mine)
    assert e.payload is q or np.shares_memory(e.payload, q), "sent as is"
    np.testing.assert_array_equal(got, q)
    # a next shard calibrated a little differently gets the same reals on its own map
    theirs = Affine(0.1, 0)
    got, _ = _round_trip(q, WireFormat("int8"), want=np.int8, want_affine=theirs, affine=mine)
    np.testing.assert_allclose(theirs.dequantise(got), mine.dequantise(q), atol=0.05 + 1e-6)
    # and a float next shard gets the reals
    got, _ = _round_trip(q, WireFormat("int8"), affine=mine)
    np.testing.assert_allclose(got, mine.dequantise(q))
    # fp32 on the hop: dequantised before it leaves (four times the bytes, but exact reals)
    got, e = _round_trip(q, WireFormat("fp32"), want=np.int8, want_affine=mine, affine=mine)
    assert e.dtype == np.float32
    np.testing.assert_array_equal(got, q)


def test_a_float_tensor_for_an_int8_input_is_quantised_on_its_map():
    x = np.linspace(-1, 1, 50, dtype=np.float32)
    theirs = Affine(2 / 255, 0)
    got, _ = _round_trip(x, WireFormat("fp16"), want=np.int8, want_affine=theirs)
    assert got.dtype == np.int8
    assert np.max(np.abs(theirs.dequantise(got) - x)) <= theirs.scale / 2 + 1e-3


def test_bad_encodings_are_refused_with_what_is_wrong():
    with pytest.raises(codecs.CodecError, match="unknown activation precision 'int4'"):
        WireFormat.parse("int4")
    with pytest.raises(codecs.CodecError, match="unknown compressor 'gzip'"):
        WireFormat.parse("fp16+gzip")
    x = np.ones((32, 32), np.float32)
    e = codecs.encode(x, WireFormat("fp32", "lz4"))
    corrupt = np.frombuffer(b"\xff" * e.payload.nbytes, np.uint8)
    with pytest.raises(codecs.CodecError, match="does not decompress"):
        codecs.decode(corrupt, e.encoding, e.dtype, e.shape, np.dtype(np.float32))
    q = np.zeros(4, np.int8)   # int8 without a scale cannot become floats
    with pytest.raises(codecs.CodecError, match="cannot become the float32"):
        codecs.decode(q, tensor_pb2.Encoding(), np.dtype(np.int8), (4,), np.dtype(np.float32))
    lying = tensor_pb2.Tensor(name="t", dtype=tensor_pb2.FLOAT32, shape=[1 << 20],
                              encoding=tensor_pb2.Encoding(compression=tensor_pb2.LZ4,
                                                           compressed_bytes=0))
    with pytest.raises(tensors.TensorError, match="compressed size 0 is out of range"):
        tensors.payload_layout(lying)
