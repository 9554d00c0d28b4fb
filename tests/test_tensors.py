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
