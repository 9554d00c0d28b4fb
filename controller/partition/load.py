"""Load a model to split: a .keras or .h5 file, a SavedModel directory, or a
keras.applications architecture name (built with weights=None: nothing is downloaded).

A SavedModel loads through keras.layers.TFSMLayer as ONE opaque layer (Keras 3 cannot
recover its layer graph), so it can be served whole but not cut; save the model as .keras
to split it.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from layerfleet.controller.partition.errors import ModelFileError, PartitionError


def _keras() -> Any:
    from layerfleet.controller.partition.tf import keras

    return keras()


def builtin_architectures() -> dict[str, Any]:
    """keras.applications constructors by lower-case name."""
    keras = _keras()
    return {name.lower(): fn for name, fn in vars(keras.applications).items()
            if callable(fn) and name[0].isupper()}


def load_model(spec: str, *, input_shape: tuple[int, ...] | None = None,
               weights: str | None = None) -> Any:
    keras = _keras()
    path = Path(spec)
    shape = tuple(input_shape) if input_shape else None
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise PartitionError(f"{spec}: a directory but not a SavedModel (no saved_model.pb)")
        model = _from_savedmodel(path, shape)
    elif path.suffix in (".keras", ".h5"):
        if not path.exists():
            raise ModelFileError(f"{spec}: no such file")
        problem = file_format_problem(path, path.suffix)
        if problem:
            raise ModelFileError(f"{spec}: {problem}")
        try:
            # safe_mode (the default) refuses Lambda layers that would run pickled code.
            model = keras.models.load_model(path, compile=False)
        except (ValueError, OSError, TypeError, KeyError) as exc:
            raise ModelFileError(f"{spec}: cannot load: {str(exc).splitlines()[0]}") from None
    elif path.suffix or "/" in spec:
        raise ModelFileError(f"{spec}: not a .keras, .h5 or SavedModel directory"
                             + ("" if path.exists() else " (and no such file)"))
    else:
        model = _builtin(spec, shape)
        shape = None
    if weights:
        try:
            model.load_weights(weights)
        except (ValueError, OSError) as exc:
            raise PartitionError(f"{weights}: cannot load weights: {exc}") from None
    if shape is not None:
        model = _with_input_shape(model, shape)
    return model


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def file_format_problem(source: Path | bytes, suffix: str) -> str:
    """What is wrong with a `.keras` or `.h5` file (a path, or its bytes) before Keras sees
    it (Keras answers a non-zip .keras with "File not found"); "" if it looks right."""
    with (open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)) as f:
        if suffix == ".keras":
            if not zipfile.is_zipfile(f):
                return "not a .keras file: a .keras file is a zip archive (model.save('x.keras'))"
            with zipfile.ZipFile(f) as archive:
                if "config.json" not in archive.namelist():
                    return "not a .keras file: the zip archive holds no config.json"
        elif suffix == ".h5":
            # HDF5 puts its signature at byte 0 or, after a user block, at 512, 1024, 2048...
            size = f.seek(0, io.SEEK_END)
            for offset in [0, *(512 << k for k in range(20) if 512 << k < size)]:
                f.seek(offset)
                if f.read(8) == HDF5_SIGNATURE:
                    return ""
            return "not an .h5 file: no HDF5 signature (save the model with model.save('x.h5'))"
    return ""


def _builtin(name: str, shape: tuple[int, ...] | None) -> Any:
    keras = _keras()
    archs = builtin_architectures()
    fn = archs.get(name.lower())
    if fn is None:
        sample = ", ".join(sorted(n for n in vars(keras.applications) if n[0].isupper())[:12])
        raise PartitionError(f"{name!r} is not a file nor a keras.applications architecture "
                             f"(for example: {sample}, ...)")
    kwargs: dict[str, Any] = {"weights": None}
    if shape is not None:
        kwargs["input_shape"] = shape
    keras.utils.set_random_seed(0)  # random init, but the same one every time
    try:
        return fn(**kwargs)
    except ValueError as exc:
        raise PartitionError(f"{name}: {exc}") from None


def _from_savedmodel(path: Path, shape: tuple[int, ...] | None) -> Any:
    keras = _keras()
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    if shape is None:
        raise PartitionError(f"{path}: a SavedModel needs input_shape (its signature may "
                             f"have dynamic dimensions)")
    inp = keras.Input(shape, name="input")
    out = layer(inp)
    if isinstance(out, dict):
        out = list(out.values())
    return keras.Model(inp, out, name=path.name)


def _with_input_shape(model: Any, shape: tuple[int, ...]) -> Any:
    """The same model with a fixed input shape (LiteRT needs one), weights copied."""
    keras = _keras()
    current = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if current == shape:
        return model
    if len(getattr(model, "inputs", []) or []) > 1:
        raise PartitionError("input_shape applies to single-input models only")
    try:
        clone = keras.models.clone_model(model, input_tensors=keras.Input(shape))
        clone.set_weights(model.get_weights())
    except (ValueError, TypeError) as exc:
        raise PartitionError(f"cannot give {model.name} input shape {list(shape)}: "
                             f"{str(exc).splitlines()[0]}") from None
    return clone


def model_digest(model: Any) -> str:
    """sha256 of the architecture and every weight: the same model always hashes the same."""
    h = hashlib.sha256(model.to_json().encode())
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return h.hexdigest()
