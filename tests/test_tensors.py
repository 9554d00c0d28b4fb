"""Wire tensor coding round-trips every dtype and rejects what does not add up."""

import numpy as np
import pytest
from layerfleet.agent import tensors
from layerfleet.v1 import tensor_pb2

DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(dtype: str) -> None:
    arr = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    back = tensors.decode(tensors.encode("x", arr))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_big_endian_arrays_arrive_little_endian() -> None:
    arr = np.arange(5, dtype=">f4")
    msg = tensors.encode("x", arr)
    assert msg.data == np.arange(5, dtype="<f4").tobytes()


def test_decode_is_a_view_not_a_copy() -> None:
    msg = tensors.encode("x", np.ones((64, 64), np.float32))
    assert not tensors.decode(msg).flags.owndata


def test_byte_count_that_does_not_match_shape_is_refused() -> None:
    msg = tensor_pb2.Tensor(name="x", dtype=tensor_pb2.FLOAT32, shape=[2, 2], data=b"\0" * 12)
    with pytest.raises(tensors.TensorError,
                       match="12 bytes for shape \\[2, 2\\] float32, expected 16"):
        tensors.decode(msg)


def test_unsupported_dtype_names_the_supported_ones() -> None:
    with pytest.raises(tensors.TensorError, match="complex64 cannot travel"):
        tensors.encode("x", np.zeros(2, np.complex64))


def test_duplicate_names_are_refused() -> None:
    t = tensors.encode("a", np.zeros(1, np.float32))
    with pytest.raises(tensors.TensorError, match="appears twice"):
        tensors.decode_many([t, t])


# -- shapes from the wire: one checked conversion -------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HOSTILE_SHAPES = [
    [1] * 65,                      # more dimensions than numpy can hold
    [2 ** 62, 2 ** 62, 0],         # zero bytes, but no array numpy can make
    [-1, 4],
    [2 ** 31, 1],                  # over LiteRT's int32 dimensions
    [2 ** 40, 2 ** 40, 3],         # wraps int64 when multiplied there
]


@pytest.mark.parametrize("shape", HOSTILE_SHAPES, ids=str)
def test_a_shape_no_array_can_have_is_refused_as_a_tensor_error(shape: list[int]) -> None:
    msg = tensor_pb2.Tensor(name="x", dtype=tensor_pb2.FLOAT32, shape=shape, data=b"")
    with pytest.raises(tensors.TensorError, match="tensor 'x'"):
        tensors.decode(msg)


def test_sizes_are_exact_integers_and_bounded_by_the_callers_limit() -> None:
    assert tensors.check_shape([2 ** 20, 2 ** 20], 1, max_bytes=2 ** 40) == 2 ** 40
    with pytest.raises(tensors.TensorError, match="over the limit of 1000 bytes"):
        tensors.layout(tensor_pb2.FLOAT32, (16, 16), "x", max_bytes=1000)


shape_st = st.lists(st.one_of(st.integers(-3, 8), st.integers(0, 2 ** 63 - 1)), max_size=70)


@settings(max_examples=400, deadline=None)
@given(shape_st, st.sampled_from(DTYPES))
def test_any_shape_is_either_refused_or_an_array_numpy_can_make(shape: list[int],
                                                                 dtype: str) -> None:
    code = tensors.dtype_code(dtype)
    try:
        dt, nbytes = tensors.layout(code, shape, "x", max_bytes=1 << 16)
    except tensors.TensorError:
        return
    assert nbytes <= 1 << 16
    array = np.zeros(nbytes, np.uint8).view(dt).reshape(shape)
    assert array.nbytes == nbytes
