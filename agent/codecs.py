"""Activation encodings: how a tensor crosses a hop, and how the receiver gets back what its
shard takes. Pure functions over numpy arrays (no I/O, no TensorFlow).

A hop's `WireFormat` is a precision and an optional compressor:

    fp32   float32 as computed; an int8 shard's int8 output is dequantised first
    fp16   float16 (half the bytes); values beyond float16's range keep float32
    int8   int8 affine per tensor, real = scale * (q - zero_point) (a quarter of the bytes);
           an int8 shard's int8 output goes as it is, with its own scale and zero point
    +lz4 / +zstd   the encoded bytes compressed, kept only where that saves >= 10 %

Every tensor an agent sends on carries an `Encoding` (tensor.proto); the receiver turns it
into what its shard's input contract says (`to_contract`): a float32 input gets float32 (a
cast or a dequantisation), an int8 input gets int8 on the shard's own scale and zero point
(sent as is when they match, requantised when not). A tensor without an Encoding must match
the contract exactly, as before.

The error each encoding promises (tests/agent/test_codecs.py checks them on real data):

    fp16   |decoded - x| <= 2^-11 |x| for |x| >= 2^-14, <= 2^-25 below
    int8   |decoded - x| <= scale / 2 (float32 rounding aside), scale = (max - min) / 255
           over the tensor with 0 inside the range; only an int8 shard's own output (sent
           as is) carries that shard's quantisation error instead

Non-finite tensors (NaN, inf) go as float32: an affine range cannot hold them.

Whatever crosses a device boundary goes through here: the hops of a deployment, and the
edge output of an early exit (issue 15) alike (`encode` then `decode`; a 1-bit form would be
one more WirePrecision value and one more branch in each).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from layerfleet.agent.errors import InvalidArgument
from layerfleet.agent.tensors import TensorError, numpy_dtype
from layerfleet.v1 import tensor_pb2

Precision = Literal["fp32", "fp16", "int8"]
Compressor = Literal["none", "lz4", "zstd"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
COMPRESSORS: tuple[Compressor, ...] = get_args(Compressor)

_PRECISION_PB = {"fp32": tensor_pb2.WIRE_FP32, "fp16": tensor_pb2.WIRE_FP16,
                 "int8": tensor_pb2.WIRE_INT8}
_COMPRESSION_PB = {"none": tensor_pb2.COMPRESSION_NONE, "lz4": tensor_pb2.LZ4,
                   "zstd": tensor_pb2.ZSTD}
assert set(_PRECISION_PB.values()) == set(tensor_pb2.WirePrecision.values()), \
    "tensor.proto WirePrecision and agent/codecs.py disagree"
assert set(_COMPRESSION_PB.values()) == set(tensor_pb2.Compression.values()), \
    "tensor.proto Compression and agent/codecs.py disagree"

# Keep a compressed payload only when it is at most this share of the raw bytes: below
# that, decompressing costs less than the bytes it saves on any link slower than memory.
PAYS = 0.9
FP16_MAX = float(np.finfo(np.float16).max)
FP16_RELATIVE = 2.0 ** -11      # half of float16's spacing at 1.0
FP16_ABSOLUTE = 2.0 ** -25      # half of its subnormal spacing
ZSTD_LEVEL = 1


class CodecError(InvalidArgument):
    """An encoding that cannot be applied or undone; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Affine:
    """int8 values standing for reals: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def dequantise(self, q: np.ndarray) -> np.ndarray:
        return ((q.astype(np.float32) - np.float32(self.zero_point))
                * np.float32(self.scale)).astype(np.float32, copy=False)

    def quantise(self, x: np.ndarray) -> np.ndarray:
        q = np.rint(np.asarray(x, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def same_as(self, other: Affine | None) -> bool:
        """The same map, up to float32 rounding of the scale (two shards calibrated on one
        tensor agree to the last bit or two)."""
        return other is not None and self.zero_point == other.zero_point and \
            abs(self.scale - other.scale) <= 1e-6 * max(abs(self.scale), abs(other.scale))

    @classmethod
    def covering(cls, x: np.ndarray) -> Affine:
        """The int8 affine map of x's range (with 0 inside it, so zeros stay exact)."""
        lo = min(float(np.min(x)), 0.0) if x.size else 0.0
        hi = max(float(np.max(x)), 0.0) if x.size else 0.0
        scale = (hi - lo) / 255.0 or 1.0
        return cls(scale, int(np.clip(round(-128 - lo / scale), -128, 127)))


@dataclass(frozen=True, slots=True)
class WireFormat:
    """How one hop's activations travel."""

    precision: Precision = "fp32"
    compression: Compressor = "none"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise CodecError(f"unknown activation precision {self.precision!r}: choose one of "
                             f"{', '.join(PRECISIONS)}")
        if self.compression not in COMPRESSORS:
            raise CodecError(f"unknown compressor {self.compression!r}: choose one of "
                             f"{', '.join(COMPRESSORS)}")

    @classmethod
    def parse(cls, text: str) -> WireFormat:
        """'int8', 'fp16+lz4', 'fp32+zstd' (the CLI's --activations)."""
        precision, _, compression = text.strip().lower().partition("+")
        return cls(precision or "fp32", compression or "none")  # type: ignore[arg-type]

    def describe(self) -> str:
        return self.precision if self.compression == "none" else \
            f"{self.precision}+{self.compression}"

    def to_pb(self) -> tensor_pb2.WireFormat:
        return tensor_pb2.WireFormat(precision=_PRECISION_PB[self.precision],
                                     compression=_COMPRESSION_PB[self.compression])

    @classmethod
    def from_pb(cls, pb: tensor_pb2.WireFormat) -> WireFormat:
        precision = {v: k for k, v in _PRECISION_PB.items()}.get(pb.precision)
        compression = {v: k for k, v in _COMPRESSION_PB.items()}.get(pb.compression)
        if precision is None or compression is None:
            raise CodecError(f"unknown wire format {pb.precision}/{pb.compression}")
        return cls(precision, compression)


FP32 = WireFormat()


@dataclass(frozen=True, slots=True)
class Encoded:
    """A tensor ready for the wire: its payload (the values, or their compressed bytes as
    uint8) and the Encoding that says how to read it."""

    payload: np.ndarray
    encoding: tensor_pb2.Encoding
    dtype: np.dtype            # the encoded values' dtype (what Tensor.dtype says)
    shape: tuple[int, ...]


# What a sender hands a transport: plain arrays, or activations encoded for the next hop.
Tensors = Mapping[str, "np.ndarray | Encoded"]


# -- compressors ------------------------------------------------------------------------

def _compress(kind: Compressor, data: memoryview) -> bytes:
    if kind == "lz4":
        import lz4.block

        return lz4.block.compress(data, store_size=False)
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


def _decompress(code: int, data: np.ndarray, nbytes: int) -> np.ndarray:
    if code == tensor_pb2.LZ4:
        import lz4.block

        try:
            out = lz4.block.decompress(memoryview(data), uncompressed_size=nbytes)
        except lz4.block.LZ4BlockError as exc:
            raise CodecError(f"compressed tensor does not decompress (lz4): {exc}") from None
    elif code == tensor_pb2.ZSTD:
        import zstandard

        try:
            out = zstandard.ZstdDecompressor().decompress(memoryview(data),
                                                          max_output_size=nbytes)
        except zstandard.ZstdError as exc:
            raise CodecError(f"compressed tensor does not decompress (zstd): {exc}") from None
    else:
        raise CodecError(f"unknown compression {code}")
    if len(out) != nbytes:
        raise CodecError(f"compressed tensor decompresses to {len(out)} bytes, its shape "
                         f"needs {nbytes}")
    return np.frombuffer(out, np.uint8)


# -- sending ----------------------------------------------------------------------------

def encode(array: np.ndarray, fmt: WireFormat, affine: Affine | None = None) -> Encoded:
    """One tensor as `fmt` says. `affine` is given when `array` is an int8 shard output
    (its values stand for reals on that map)."""
    x = np.asarray(array)
    enc = tensor_pb2.Encoding()
    if affine is not None and x.dtype in (np.int8, np.uint8):
        if fmt.precision == "int8" and x.dtype == np.int8:
            values = x                           # already int8 on the wire's terms
            enc.scale, enc.zero_point = affine.scale, affine.zero_point
        else:
            values = _float(affine.dequantise(x), fmt)
    elif fmt.precision == "int8" and x.dtype == np.float32 and _finite(x):
        a = Affine.covering(x)
        values = a.quantise(x)
        enc.scale, enc.zero_point = a.scale, a.zero_point
    elif x.dtype == np.float32:
        values = _float(x, fmt)
    else:
        values = x                               # ints, bools: not ours to change
    values = np.ascontiguousarray(values)
    payload = values
    if fmt.compression != "none" and values.nbytes:
        packed = _compress(fmt.compression, memoryview(values.reshape(-1).view(np.uint8)))
        if len(packed) <= PAYS * values.nbytes:
            payload = np.frombuffer(packed, np.uint8)
            enc.compression = _COMPRESSION_PB[fmt.compression]
            enc.compressed_bytes = len(packed)
    return Encoded(payload, enc, values.dtype, tuple(values.shape))


def _finite(x: np.ndarray) -> bool:
    return bool(np.isfinite(x).all()) if x.size else True


def _float(x: np.ndarray, fmt: WireFormat) -> np.ndarray:
    """float32 values halved when fmt is fp16 and float16 holds them, else as they are."""
    if fmt.precision == "fp16" and x.size and _finite(x) and \
            float(np.max(np.abs(x))) <= FP16_MAX:
        return x.astype(np.float16)
    return x


def encode_many(arrays: Mapping[str, np.ndarray], fmt: WireFormat,
                affines: Mapping[str, Affine | None] | None = None) -> dict[str, Encoded]:
    affines = affines or {}
    return {name: encode(arr, fmt, affines.get(name)) for name, arr in arrays.items()}


# -- receiving --------------------------------------------------------------------------

def decode(payload: np.ndarray, encoding: tensor_pb2.Encoding, dtype: np.dtype,
           shape: tuple[int, ...], want: np.dtype, want_affine: Affine | None = None,
           name: str = "") -> np.ndarray:
    """The tensor a receiver's shard takes (`want`, on `want_affine` for int8) from what
    came off the wire. CodecError when no conversion exists (an int8 tensor without a scale
    for a float input, say)."""
    values = payload
    if encoding.compression:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        values = _decompress(encoding.compression, payload, nbytes)
    values = values.view(dtype).reshape(shape) if values.dtype != dtype or \
        values.shape != shape else values
    sent_affine = Affine(encoding.scale, encoding.zero_point) if encoding.scale else None
    want = np.dtype(want)
    if values.dtype == want and (want.kind == "f" or want_affine is None
                                 or (sent_affine is not None and sent_affine.same_as(want_affine))):
        return values   # already what the shard takes: int8 on its own map goes as it is
    if want == np.float32 and values.dtype.kind == "f":
        return values.astype(np.float32)
    if want == np.float32 and sent_affine is not None:
        return sent_affine.dequantise(values)
    if want == np.int8 and want_affine is not None:
        real = sent_affine.dequantise(values) if sent_affine is not None else \
            values.astype(np.float32) if values.dtype.kind == "f" else None
        if real is not None:
            return want_affine.quantise(real)
    raise CodecError(f"tensor {name!r}: {dtype.name} "
                     f"{'with scale ' + str(encoding.scale) if sent_affine else ''}"
                     f" cannot become the {want.name} this shard takes")


def to_contract(inputs: Mapping[str, np.ndarray],
                encodings: Mapping[str, tensor_pb2.Tensor],
                contracts: Mapping[str, tuple[np.dtype, Affine | None]]) -> dict[str, np.ndarray]:
    """A request's inputs as its shard takes them: every tensor that arrived with an
    Encoding (`encodings` holds those tensors' headers, by name) decoded to its contract;
    the others passed as they are (the shard's own check judges them)."""
    out = dict(inputs)
    for name, header in encodings.items():
        if name not in out or name not in contracts:
            continue   # the contract check names what is missing or extra
        try:
            dtype, shape = numpy_dtype(header.dtype), tuple(header.shape)
        except TensorError as exc:
            raise CodecError(str(exc)) from None
        want, want_affine = contracts[name]
        out[name] = decode(out[name], header.encoding, dtype, shape, want, want_affine, name)
    return out


def encoded_headers(tensors: Iterable[tensor_pb2.Tensor]) -> dict[str, tensor_pb2.Tensor]:
    """The tensors of a request that carry an Encoding, by name (what to_contract takes)."""
    return {t.name: t for t in tensors if t.HasField("encoding")}


def hand_over(outputs: Mapping[str, np.ndarray], affines: Mapping[str, Affine | None],
              fmt: WireFormat, wants: Mapping[str, tuple[np.dtype, Affine | None]]
              ) -> dict[str, np.ndarray]:
    """What one stage's outputs become as the next stage's inputs across a hop in `fmt`:
    encoded as the sender does, decoded as the receiver does (run-local and the accuracy
    measurements use this to see exactly what a deployment computes)."""
    out = {}
    for name, arr in outputs.items():
        e = encode(arr, fmt, affines.get(name))
        want, want_affine = wants.get(name, (e.dtype, None))
        out[name] = decode(e.payload, e.encoding, e.dtype, e.shape, want, want_affine, name)
    return out


def floats(outputs: Mapping[str, np.ndarray], affines: Mapping[str, Affine | None]
           ) -> dict[str, np.ndarray]:
    """Outputs as a client takes them: int8 ones (a shard that ends before its dequantise)
    as the floats they stand for."""
    return {name: affines[name].dequantise(arr) if affines.get(name) is not None else arr
            for name, arr in outputs.items()}
