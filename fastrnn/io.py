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

__all__ = ["save", "load", "save_safetensors", "load_safetensors"]

_ST_DTYPES = {
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "BF16": None,
}
_ST_NAMES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
}
_CONFIG_KEY = "__fastrnn_config__"


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
    config = json.dumps({"class": type(model).__name__, "config": model.config()})
    tensors = model.state_dict()
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
    spec = json.loads(config)
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
    model.load_state_dict(tensors)
    return model
