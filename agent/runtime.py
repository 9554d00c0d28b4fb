"""LiteRT shard runtime: load a flatbuffer, bind named inputs and outputs, run it.

Used by the agent and by `layerfleet run-local`. Imports no TensorFlow unless neither
ai-edge-litert nor tflite-runtime is installed (then tensorflow.lite, as a last resort).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from layerfleet.agent.codecs import Affine
from layerfleet.agent.errors import InvalidArgument

# Preference order: the maintained LiteRT wheel, the dead-upstream legacy one, then TF.
_BACKENDS: tuple[tuple[str, str], ...] = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),
)


class RuntimeUnavailable(RuntimeError):
    """No LiteRT interpreter is installed."""


class ShardInputError(InvalidArgument):
    """Inputs that do not match the shard's contract; the message names expected and received."""


def _load_backend() -> tuple[str, Any]:
    for name, module in _BACKENDS:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        return name, mod.Interpreter
    raise RuntimeUnavailable(
        "no LiteRT interpreter found: pip install ai-edge-litert "
        "(or the legacy tflite-runtime)")


_backend: tuple[str, Any] | None = None


def backend() -> tuple[str, Any]:
    """(package name, Interpreter class) of the interpreter in use, chosen once per process."""
    global _backend
    if _backend is None:
        _backend = _load_backend()
    return _backend


def loaded() -> bool:
    """Whether this process has loaded its interpreter (a shard or a benchmark ran here)."""
    return _backend is not None


def backend_name() -> str:
    """The package name of the interpreter in use, or of the one backend() would choose,
    without importing it: Describe and the mDNS record name the runtime, and an idle agent
    need not load LiteRT (9 MiB resident) to say which it has."""
    if _backend is not None:
        return _backend[0]
    for name, module in _BACKENDS:
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            return name
    return "none"


@dataclass(frozen=True, slots=True)
class TensorContract:
    """A named shard tensor: the name the manifest uses, its dtype and fixed shape, and for
    an int8 shard's int8 tensor the affine map its values stand on."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    affine: Affine | None = None

    def describe(self) -> str:
        return f"{self.name} {self.dtype.name}{list(self.shape)}"


class ShardRunner:
    """One LiteRT flatbuffer, ready to run.

    Tensors are named by the signature of the flatbuffer's only signature (the partitioner
    names each signature input after the activation tensor it carries). `aliases` maps
    signature names to the names callers use, when those differ (LiteRT names outputs
    output_0, output_1, ...). Not thread-safe: one runner per worker thread.
    """

    def __init__(self, model: bytes | Path | str, *, num_threads: int | None = None,
                 aliases: Mapping[str, str] | None = None) -> None:
        _, interpreter_cls = backend()
        if isinstance(model, (bytes, bytearray, memoryview)):
            content = bytes(model)
        else:
            content = Path(model).read_bytes()
        self._interpreter = interpreter_cls(model_content=content, num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        if len(signatures) != 1:
            raise ValueError(f"a shard has exactly one signature, this flatbuffer has "
                             f"{len(signatures)}: {sorted(signatures)}")
        (self._key,) = signatures
        self._runner = self._interpreter.get_signature_runner(self._key)
        aliases = dict(aliases or {})
        self._to_sig = {aliases.get(s, s): s for s in list(signatures[self._key]["inputs"])
                        + list(signatures[self._key]["outputs"])}
        self._from_sig = {s: a for a, s in self._to_sig.items()}
        in_details = self._runner.get_input_details()
        out_details = self._runner.get_output_details()
        self.inputs = self._contracts(in_details)
        self.outputs = self._contracts(out_details)
        self._inputs_by_name = {c.name: c for c in self.inputs}

    def _contracts(self, details: Mapping[str, Any]) -> tuple[TensorContract, ...]:
        return tuple(TensorContract(self._from_sig.get(k, k), np.dtype(d["dtype"]),
                                    tuple(int(x) for x in d["shape"]), _affine(d))
                     for k, d in details.items())

    @property
    def wants(self) -> dict[str, tuple[np.dtype, Affine | None]]:
        """Per input, the dtype and affine map it takes (what codecs.to_contract needs)."""
        return {c.name: (c.dtype, c.affine) for c in self.inputs}

    @property
    def output_affines(self) -> dict[str, Affine | None]:
        return {c.name: c.affine for c in self.outputs}

    def check(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise ShardInputError naming expected and received when inputs break the contract."""
        missing = [n for n in self._inputs_by_name if n not in inputs]
        extra = [n for n in inputs if n not in self._inputs_by_name]
        if missing or extra:
            raise ShardInputError(
                f"expected inputs {[c.describe() for c in self.inputs]}, "
                f"received {sorted(inputs)}")
        for name, arr in inputs.items():
            want = self._inputs_by_name[name]
            if arr.dtype != want.dtype or tuple(arr.shape) != want.shape:
                raise ShardInputError(
                    f"input {name}: expected {want.dtype.name}{list(want.shape)}, "
                    f"received {arr.dtype.name}{list(arr.shape)}")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the shard once. Inputs and outputs are keyed by caller names."""
        self.check(inputs)
        result = self._runner(**{self._to_sig[n]: a for n, a in inputs.items()})
        return {self._from_sig.get(k, k): v for k, v in result.items()}


def _affine(detail: Mapping[str, Any]) -> Affine | None:
    """The affine map of an integer tensor from LiteRT's details (scale 0: none)."""
    if np.dtype(detail["dtype"]).kind not in "iu":
        return None
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return Affine(float(scale), int(zero_point)) if scale else None
