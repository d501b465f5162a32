"""Weight files without pickle: ``.safetensors`` and ``.npz``.

Both carry the model's class and constructor arguments as JSON metadata, so
``load(path)`` rebuilds the model alone. The safetensors format (an 8-byte
little-endian header length, a JSON header, raw little-endian tensor bytes)
is read and written here directly, so the core needs no extra dependency;
files interoperate with the ``safetensors`` package (tested).
"""

import json
import os
import struct

import numpy as np

from ._version import __version__

__all__ = ["save", "load", "save_safetensors", "load_safetensors"]

_ST_DTYPES = {
    "I8": np.int8,
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "BF16": None,
}
_ST_NAMES = {
    np.dtype(np.int8): "I8",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
}
_CONFIG_KEY = "__fastrnn_config__"
#: Version of the layout written into the configuration; files of a newer version are refused.
FORMAT_VERSION = 2  # 1: float weights only (no "format_version" key); 2: adds "weights"
_WEIGHT_FORMATS = ("float32", "float64", "int8")


def save_safetensors(path, tensors, metadata=None):
    """Write ``tensors`` (dict of str to ndarray) to ``path`` in safetensors format."""
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _ST_NAMES:
            raise TypeError(f"cannot store {name!r} of dtype {arr.dtype} in safetensors")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _ST_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in blobs:
            f.write(data)


def load_safetensors(path):
    """Read a safetensors file; returns ``(tensors, metadata)``."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError(f"{path}: not a safetensors file (header length {n} exceeds file size)")
    try:
        header = json.loads(blob[8 : 8 + n])
    except ValueError as exc:
        raise ValueError(f"{path}: not a safetensors file (bad JSON header: {exc})") from None
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(blob)[8 + n :]
    tensors = {}
    for name, info in header.items():
        dtype = _ST_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        dt = np.dtype(dtype).newbyteorder("<")
        if end - begin != int(np.prod(shape)) * dt.itemsize or end > len(body):
            raise ValueError(f"{path}: tensor {name!r} has inconsistent size for shape {shape}")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dt).reshape(shape).astype(dtype)
    return tensors, metadata


def save(model, path):
    """Save a fastrnn model's parameters and configuration.

    Parameters
    ----------
    model : RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell
    path : str or os.PathLike
        Ending in ``.safetensors`` or ``.npz``.
    """
    path = os.fspath(path)
    weights = getattr(model, "weights_format", None) or model.dtype.name
    spec = {
        "class": type(model).__name__,
        "config": model.config(),
        "format_version": FORMAT_VERSION,
        "weights": weights,
    }
    config = json.dumps(spec)
    tensors = model.quantized_state_dict() if weights == "int8" else model.state_dict()
    if path.endswith(".safetensors"):
        save_safetensors(path, tensors, {_CONFIG_KEY: config, "format": "np"})
    elif path.endswith(".npz"):
        np.savez(path, **tensors, **{_CONFIG_KEY: np.array(config)})
    else:
        raise ValueError(f"path must end in '.safetensors' or '.npz'; got {path!r}")


def load(path):
    """Load a model written by :func:`save` (or by ``fastrnn_torch.export``).

    Raises
    ------
    ValueError
        If the file lacks the configuration, or its tensors do not match it
        (names, shapes, non-finite values).
    """
    from . import cells, layers

    path = os.fspath(path)
    if path.endswith(".safetensors"):
        tensors, metadata = load_safetensors(path)
        config = metadata.get(_CONFIG_KEY)
    elif path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            tensors = {k: f[k] for k in f.files}
        config = tensors.pop(_CONFIG_KEY, None)
        config = None if config is None else str(config)
    else:
        raise ValueError(f"path must end in '.safetensors' or '.npz'; got {path!r}")
    if config is None:
        raise ValueError(
            f"{path}: no fastrnn configuration in the file's metadata (key {_CONFIG_KEY!r})"
        )
    try:
        spec = json.loads(config)
    except ValueError as exc:
        raise ValueError(f"{path}: the fastrnn configuration is not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise ValueError(f"{path}: the fastrnn configuration must be an object with a 'config'")
    version = spec.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: written in fastrnn file format version {version!r}; this fastrnn "
            f"({__version__}) reads versions up to {FORMAT_VERSION}: upgrade fastrnn"
        )
    weights = spec.get("weights", "float")
    if version >= 2 and weights not in _WEIGHT_FORMATS:
        raise ValueError(
            f"{path}: weights stored in format {weights!r}, which this fastrnn "
            f"({__version__}) does not know (it knows {', '.join(_WEIGHT_FORMATS)})"
        )
    classes = {
        name: getattr(mod, name)
        for mod, names in ((layers, layers.__all__), (cells, cells.__all__))
        for name in names
        if isinstance(getattr(mod, name), type)
    }
    cls = classes.get(spec.get("class"))
    if cls is None:
        raise ValueError(
            f"{path}: unknown model class {spec.get('class')!r}; expected one of {sorted(classes)}"
        )
    model = cls(**spec["config"])
    if weights == "int8":
        if not hasattr(model, "load_quantized_state_dict"):
            raise ValueError(f"{path}: int8 weights for {cls.__name__}, which has no int8 form")
        return model.load_quantized_state_dict(tensors)
    model.load_state_dict(tensors)
    return model
