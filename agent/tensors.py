"""The one place where numpy arrays become wire tensors and back.

Tensors travel as dtype + shape + raw little-endian bytes in C order (tensor.proto).
Decoding is zero-copy: the array is a read-only view over the message's bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
from layerfleet.agent.errors import InvalidArgument
from layerfleet.v1 import tensor_pb2

# Proto enum <-> numpy dtype. Little-endian everywhere: a Pi and an x86 VM agree.
_TO_NUMPY: dict[int, np.dtype] = {
    tensor_pb2.FLOAT32: np.dtype("<f4"),
    tensor_pb2.FLOAT16: np.dtype("<f2"),
    tensor_pb2.FLOAT64: np.dtype("<f8"),
    tensor_pb2.INT8: np.dtype("i1"),
    tensor_pb2.UINT8: np.dtype("u1"),
    tensor_pb2.INT16: np.dtype("<i2"),
    tensor_pb2.INT32: np.dtype("<i4"),
    tensor_pb2.INT64: np.dtype("<i8"),
    tensor_pb2.BOOL: np.dtype("?"),
}
_FROM_NUMPY: dict[str, int] = {dt.str.lstrip("<|"): code for code, dt in _TO_NUMPY.items()}

# Keep the proto enum and this table in step (a new DType must get a numpy mapping).
assert set(_TO_NUMPY) == set(tensor_pb2.DType.values()) - {tensor_pb2.DTYPE_UNSPECIFIED}, (
    "tensor.proto DType and agent/tensors.py disagree"
)


class TensorError(InvalidArgument):
    """A tensor that cannot be decoded or does not match its contract; the message says why."""


def dtype_name(code: int) -> str:
    """'float32' for tensor_pb2.FLOAT32, for messages a person reads."""
    return _TO_NUMPY[code].name if code in _TO_NUMPY else f"unknown dtype {code}"


def dtype_code(dtype: np.dtype | str | type) -> int:
    """The wire code of a numpy dtype; TensorError if the wire has none."""
    dt = np.dtype(dtype)
    try:
        return _FROM_NUMPY[dt.newbyteorder("<").str.lstrip("<|")]
    except KeyError:
        raise TensorError(f"dtype {dt.name} cannot travel on the wire; "
                          f"supported: {', '.join(sorted(d.name for d in _TO_NUMPY.values()))}"
                          ) from None


def numpy_dtype(code: int) -> np.dtype:
    try:
        return _TO_NUMPY[code]
    except KeyError:
        raise TensorError(f"unknown wire dtype {code}") from None


def wire_order(array: np.ndarray) -> tuple[int, np.ndarray]:
    """(wire dtype code, the array as C-ordered little-endian), copying only if it is not."""
    arr = np.asarray(array)
    code = dtype_code(arr.dtype)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return code, np.ascontiguousarray(arr)


# The most dimensions a tensor may have on the wire: every model we split stays under 8;
# numpy itself stops at 64, and a rank it cannot build must be refused, not crash a reader.
MAX_RANK = 16
# LiteRT keeps dimensions as int32.
MAX_DIM = (1 << 31) - 1
# What one tensor may claim when its caller has no tighter limit (callers pass their
# message or request limit): far above any activation, far below numpy's intp.
MAX_TENSOR_BYTES = 1 << 40


def layout(dtype: int, shape: tuple[int, ...] | list[int], name: str = "",
           max_bytes: int = MAX_TENSOR_BYTES) -> tuple[np.dtype, int]:
    """(numpy dtype, byte count) of a wire tensor, or TensorError saying why it cannot be
    one: an unknown dtype, or a shape that check_shape refuses for `max_bytes`."""
    try:
        dt = numpy_dtype(dtype)
    except TensorError as exc:
        raise TensorError(f"tensor {name!r}: {exc}") from None
    return dt, check_shape(shape, dt.itemsize, max_bytes, name) * dt.itemsize


def check_shape(shape: tuple[int, ...] | list[int], itemsize: int = 4,
                max_bytes: int = MAX_TENSOR_BYTES, name: str = "") -> int:
    """The number of elements in `shape`, or TensorError: a rank over MAX_RANK, a negative
    or over-int32 dimension, or more than `max_bytes` at `itemsize` bytes an element.

    The one checked conversion from a shape someone sent to a size: computed on Python
    integers (no int64 wrap-around), with zero dimensions counted as one for the limit, so
    a shape numpy could not reshape into (say [2**62, 2**62, 0]) is refused here instead
    of failing later in a reader thread."""
    shape = tuple(shape)
    if len(shape) > MAX_RANK:
        raise TensorError(f"tensor {name!r}: {len(shape)} dimensions, at most {MAX_RANK} "
                          f"are allowed")
    if any(d < 0 or d > MAX_DIM for d in shape):
        raise TensorError(f"tensor {name!r}: every dimension must be 0..{MAX_DIM}, shape "
                          f"is {list(shape)}")
    if math.prod(max(d, 1) for d in shape) * itemsize > max_bytes:
        raise TensorError(f"tensor {name!r}: shape {list(shape)} at {itemsize} bytes an "
                          f"element is over the limit of {max_bytes} bytes")
    return math.prod(shape)


def payload_layout(tensor: tensor_pb2.Tensor, max_bytes: int = MAX_TENSOR_BYTES
                   ) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, byte count) of a wire tensor's payload: its values, or for a tensor
    whose Encoding says it is compressed, that many bytes (uint8). The values' own layout
    is checked either way, so a compressed tensor cannot claim a shape beyond the limit."""
    shape = tuple(tensor.shape)
    dt, nbytes = layout(tensor.dtype, shape, tensor.name, max_bytes)
    if tensor.HasField("encoding") and tensor.encoding.compression:
        packed = tensor.encoding.compressed_bytes
        if not 0 < packed <= max_bytes:
            raise TensorError(f"tensor {tensor.name!r}: compressed size {packed} is out of "
                              f"range 1..{max_bytes}")
        return np.dtype(np.uint8), (packed,), packed
    return dt, shape, nbytes


def encode(name: str, array: np.ndarray) -> tensor_pb2.Tensor:
    """One array as a wire tensor (one copy into the message: protobuf owns its bytes)."""
    code, arr = wire_order(array)
    return tensor_pb2.Tensor(name=name, dtype=code, shape=arr.shape, data=arr.tobytes())


def encode_payload(name: str, payload: np.ndarray, dtype: np.dtype, shape: tuple[int, ...],
                   encoding: tensor_pb2.Encoding) -> tensor_pb2.Tensor:
    """An encoded activation (codecs.Encoded) as a wire tensor: the values' dtype and shape,
    the payload's bytes (the values, or their compressed form)."""
    return tensor_pb2.Tensor(name=name, dtype=dtype_code(dtype), shape=shape,
                             data=np.ascontiguousarray(payload).tobytes(), encoding=encoding)


def decode(tensor: tensor_pb2.Tensor) -> np.ndarray:
    """The array a wire tensor holds (for an encoded one: its payload), as a read-only view
    over its bytes."""
    dt, shape, nbytes = payload_layout(tensor)
    if len(tensor.data) != nbytes:
        raise TensorError(f"tensor {tensor.name!r}: {len(tensor.data)} bytes for shape "
                          f"{list(shape)} {dt.name}, expected {nbytes}")
    return np.frombuffer(tensor.data, dtype=dt).reshape(shape)


def from_bytes(data: bytes | bytearray | memoryview, dtype: int, shape: tuple[int, ...],
               name: str = "") -> np.ndarray:
    dt, expected = layout(dtype, shape, name)
    if len(data) != expected:
        raise TensorError(f"tensor {name!r}: {len(data)} bytes for shape {list(shape)} "
                          f"{dt.name}, expected {expected}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def encode_many(arrays: Mapping[str, np.ndarray]) -> list[tensor_pb2.Tensor]:
    return [encode(name, arr) for name, arr in arrays.items()]


def decode_many(tensors: list[tensor_pb2.Tensor] | Iterator[tensor_pb2.Tensor]
                ) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        if t.name in out:
            raise TensorError(f"tensor {t.name!r} appears twice")
        out[t.name] = decode(t)
    return out
