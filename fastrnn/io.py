"""Weight files without pickle: ``.safetensors`` and ``.npz``.

Both carry the model's class and constructor arguments as JSON metadata, so
``load(path)`` rebuilds the model alone. The safetensors format (an 8-byte
little-endian header length, a JSON header, raw little-endian tensor bytes)
is read and written here directly, so the core needs no extra dependency;
files interoperate with the ``safetensors`` package (tested).

Files are untrusted input (see docs/security.md): everything a file declares (header,
configuration, every tensor's dtype, shape and byte range) is checked against the
file's real size and against the model the configuration describes before any tensor
is read or any model allocated; every defect raises :class:`FileFormatError` naming the
file (and the tensor). Writing goes to a temporary file in the same directory that
replaces the target only once complete, so a failed save never damages the old file.
"""

import contextlib
import json
import math
import os
import struct
import tempfile
import zipfile

import numpy as np

from ._version import __version__

__all__ = ["save", "load", "save_safetensors", "load_safetensors", "FileFormatError"]

# safetensors' BF16 as read: 2-byte records (kind "V", unlike any integer), so a file can
# put bfloat16 only where bfloat16 weights are expected; handed out as uint16 bits.
_BFLOAT16 = np.dtype([("bfloat16", "<u2")])
_ST_DTYPES = {
    "I8": np.int8,
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "BF16": _BFLOAT16,  # written only for tensors named as bfloat16
}
_ST_NAMES = {np.dtype(t): name for name, t in _ST_DTYPES.items() if name != "BF16"}
_CONFIG_KEY = "__fastrnn_config__"
#: Version of the layout written into the configuration; files of a newer version are refused.
FORMAT_VERSION = 2  # 1: float weights only (no "format_version" key); 2: adds "weights"
# -> dtype kinds of the stored weights (bfloat16: uint16 bits in .npz, BF16 in safetensors)
_QUANTIZED_FORMATS = {"int8": "i", "bfloat16": "uV"}
_WEIGHT_FORMATS = ("float32", "float64", *_QUANTIZED_FORMATS)
_MAX_HEADER = 100 * 2**20  # bytes of JSON header (the safetensors package's own limit)
_MAX_CONFIG = 2**20  # bytes of fastrnn configuration in an .npz


class FileFormatError(ValueError):
    """A weight file that is malformed, or whose tensors do not match its configuration."""


# ----------------------------------------------------------------------------- writing


def _atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then
    move it over ``path``. On any failure the temporary file is removed and an
    existing ``path`` is untouched; readers see the old file or the new one, whole."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where possible
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _storable(name, arr, bfloat16=False):
    arr = np.ascontiguousarray(arr)
    if bfloat16:
        if arr.dtype != np.uint16:
            raise TypeError(f"bfloat16 tensor {name!r} must be uint16 bits; got {arr.dtype}")
        return arr
    if arr.dtype not in _ST_NAMES:
        raise TypeError(
            f"cannot store tensor {name!r} of dtype {arr.dtype}; storable dtypes: "
            f"{', '.join(str(d) for d in _ST_NAMES)}"
        )
    return arr


def save_safetensors(path, tensors, metadata=None, *, bfloat16=()):
    """Write ``tensors`` (dict of str to ndarray) to ``path`` in safetensors format.

    ``bfloat16`` names the tensors that hold bfloat16 bits as uint16 (NumPy has no
    bfloat16): they are written with safetensors' ``BF16`` dtype (and read back by
    :func:`load_safetensors` as uint16 bits). The file is replaced atomically (see
    :func:`save`).
    """
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        bits = name in bfloat16
        arr = _storable(name, arr, bits)
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": "BF16" if bits else _ST_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def write(f):
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in blobs:
            f.write(data)

    _atomic_write(path, write)


# ----------------------------------------------------------------------------- reading


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise FileFormatError(f"duplicate keys {dup}")
    return dict(pairs)


def _parse_json(path, raw, what):
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise FileFormatError(f"{path}: {what} is not UTF-8 text") from None
    except FileFormatError as exc:
        raise FileFormatError(f"{path}: {what} has {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise FileFormatError(f"{path}: {what} is not valid JSON ({exc})") from None


def _safetensors_layout(path, f, size):
    """Validated ``(entries, metadata, body_start)`` of an open safetensors file:
    ``entries[name] = (dtype, shape, begin, end)`` with offsets into the body."""
    head = f.read(8)
    if len(head) < 8:
        raise FileFormatError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > _MAX_HEADER:
        raise FileFormatError(
            f"{path}: not a safetensors file (header length {n} exceeds the file's {size} bytes"
            f" or the {_MAX_HEADER}-byte limit)"
        )
    header = _parse_json(path, f.read(n), "the safetensors header")
    if not isinstance(header, dict):
        raise FileFormatError(f"{path}: the safetensors header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FileFormatError(f"{path}: __metadata__ must map strings to strings")
    body = size - 8 - n
    entries, spans = {}, []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FileFormatError(f"{where} must have exactly dtype, shape and data_offsets")
        dtype = _ST_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise FileFormatError(
                f"{where} has dtype {info['dtype']!r}; fastrnn reads {', '.join(_ST_DTYPES)}"
            )
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise FileFormatError(f"{where} has shape {shape!r}; expected non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise FileFormatError(
                f"{where} has data_offsets {offsets!r}; expected [begin, end] within the "
                f"{body}-byte data section"
            )
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise FileFormatError(
                f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes, but shape "
                f"{tuple(shape)} of {info['dtype']} needs {nbytes}"
            )
        entries[name] = (np.dtype(dtype), tuple(shape), offsets[0], offsets[1])
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else "leaves a gap"
            raise FileFormatError(f"{path}: tensor {name!r} {what} in the data section")
        position = end
    if position != body:
        raise FileFormatError(
            f"{path}: the data section has {body} bytes, the tensors describe {position}"
        )
    return entries, metadata, 8 + n


def _read_safetensors(path, expect=None):
    """``(tensors, metadata)``; ``expect(entries, metadata)`` may refuse the file
    before any tensor data is read."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        entries, metadata, start = _safetensors_layout(path, f, size)
        if expect is not None:
            expect({k: (dt, shape) for k, (dt, shape, _, _) in entries.items()}, metadata)
        f.seek(start)
        body = f.read()
    if len(body) != size - start:
        raise FileFormatError(f"{path}: the file changed while it was read")
    tensors = {}
    for name, (dtype, shape, begin, _end) in entries.items():
        data = np.frombuffer(
            body, dtype=dtype.newbyteorder("<"), count=math.prod(shape), offset=begin
        )
        tensors[name] = data.reshape(shape).astype(dtype)
        if dtype == _BFLOAT16:
            tensors[name] = tensors[name].view(np.uint16)  # the bits
    return tensors, metadata


def load_safetensors(path):
    """Read a safetensors file; returns ``(tensors, metadata)``.

    Raises
    ------
    FileFormatError
        If the file is not a well-formed safetensors file (the message names the
        file and, where it applies, the tensor).
    """
    return _read_safetensors(os.fspath(path))


def _npz_members(path, archive):
    """``{key: (ZipInfo, dtype, shape, header bytes)}`` from the members' .npy headers."""
    members = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy") or info.flag_bits & 0x1:  # bit 0: encrypted
            raise FileFormatError(f"{path}: member {info.filename!r} is not a plain .npy array")
        key = info.filename[:-4]
        if key in members:
            raise FileFormatError(f"{path}: array {key!r} appears twice")
        with archive.open(info) as fp:
            try:
                version = np.lib.format.read_magic(fp)
                read = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read is None:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = read(fp)
                header_bytes = fp.tell()
            except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
                raise FileFormatError(
                    f"{path}: array {key!r} has a bad .npy header ({exc})"
                ) from None
        if dtype.hasobject or dtype.kind not in "fiuU":
            raise FileFormatError(
                f"{path}: array {key!r} has dtype {dtype}; only real numbers (and the "
                "configuration text) are read"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header_bytes + nbytes:
            raise FileFormatError(
                f"{path}: array {key!r} declares {info.file_size} bytes, its header "
                f"{header_bytes + nbytes}"
            )
        members[key] = (info, dtype, tuple(shape), fortran)
    return members


def _read_npz(path, expect=None):
    """``(tensors, config text or None)``; ``expect`` as for :func:`_read_safetensors`."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _npz_members(path, archive)
            config = None
            if _CONFIG_KEY in members:
                info, dtype, shape, _ = members.pop(_CONFIG_KEY)
                if dtype.kind != "U" or shape != () or info.file_size > _MAX_CONFIG:
                    raise FileFormatError(f"{path}: {_CONFIG_KEY} must be a short string")
                with archive.open(info) as fp:
                    config = str(np.lib.format.read_array(fp, allow_pickle=False))
            for key, (_, dtype, _, _) in members.items():
                if dtype.kind == "U":
                    raise FileFormatError(f"{path}: array {key!r} holds text, not numbers")
            if expect is not None:
                expect(
                    {k: (dt, shape) for k, (_, dt, shape, _) in members.items()},
                    {} if config is None else {_CONFIG_KEY: config},
                )
            tensors = {}
            for key, (info, _, _, _) in members.items():
                with archive.open(info) as fp:
                    tensors[key] = np.lib.format.read_array(fp, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        if isinstance(exc, (FileFormatError, FileNotFoundError)):
            raise
        raise FileFormatError(f"{path}: not a readable .npz file ({exc})") from None
    return tensors, config


# ----------------------------------------------------------------------------- models


def _model_classes():
    from . import cells, layers

    return {
        name: getattr(mod, name)
        for mod, names in ((layers, layers.__all__), (cells, cells.__all__))
        for name in names
        if isinstance(getattr(mod, name), type)
    }


def _path(path):
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}") from None


def save(model, path):
    """Save a fastrnn model's parameters and configuration.

    The file is written to a temporary file in the same directory, flushed to disk,
    then moved over ``path``: if anything fails (a full disk, a size limit), an
    existing file at ``path`` is left as it was.

    Parameters
    ----------
    model : RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell
        Its weights must be finite (a file with NaN or inf could not be loaded).
    path : str or os.PathLike
        Ending in ``.safetensors`` or ``.npz``.
    """
    if type(model).__name__ not in _model_classes() or not hasattr(model, "config"):
        raise TypeError(
            f"model must be a fastrnn RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell; got "
            f"{type(model).__name__}"
        )
    path = _path(path)
    if not path.endswith((".safetensors", ".npz")):
        raise ValueError(f"path must end in '.safetensors' or '.npz'; got {path!r}")
    weights = getattr(model, "weights_format", None) or model.dtype.name
    spec = {
        "class": type(model).__name__,
        "config": model.config(),
        "format_version": FORMAT_VERSION,
        "weights": weights,
    }
    config = json.dumps(spec)
    quantized = weights in _QUANTIZED_FORMATS
    tensors = model.quantized_state_dict() if quantized else model.state_dict()
    bfloat16 = [
        name for name, v in tensors.items() if weights == "bfloat16" and v.dtype == np.uint16
    ]
    for name, value in tensors.items():
        value = _storable(name, value, name in bfloat16)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"the model's {name!r} has non-finite values (NaN or inf); not saved")
    if path.endswith(".safetensors"):
        metadata = {_CONFIG_KEY: config, "format": "np"}
        save_safetensors(path, tensors, metadata, bfloat16=bfloat16)
    else:
        arrays = {**tensors, _CONFIG_KEY: np.array(config)}
        _atomic_write(path, lambda f: np.savez(f, **arrays))


def _spec_of(path, config):
    """The validated ``(class, config, weights format)`` of a file's configuration."""
    if config is None:
        raise FileFormatError(
            f"{path}: no fastrnn configuration in the file's metadata (key {_CONFIG_KEY!r})"
        )
    spec = _parse_json(path, config.encode("utf-8"), "the fastrnn configuration")
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise FileFormatError(f"{path}: the fastrnn configuration must be an object with 'config'")
    version = spec.get("format_version", 1)
    if type(version) is not int or version > FORMAT_VERSION:
        raise FileFormatError(
            f"{path}: written in fastrnn file format version {version!r}; this fastrnn "
            f"({__version__}) reads versions up to {FORMAT_VERSION}: upgrade fastrnn"
        )
    weights = spec.get("weights")
    if version >= 2 and weights not in _WEIGHT_FORMATS:
        raise FileFormatError(
            f"{path}: weights stored in format {weights!r}, which this fastrnn "
            f"({__version__}) does not know (it knows {', '.join(_WEIGHT_FORMATS)})"
        )
    classes = _model_classes()
    cls = classes.get(spec.get("class"))
    if cls is None:
        raise FileFormatError(
            f"{path}: unknown model class {spec.get('class')!r}; expected one of {sorted(classes)}"
        )
    if weights in _QUANTIZED_FORMATS and not hasattr(cls, "load_quantized_state_dict"):
        raise FileFormatError(
            f"{path}: {weights} weights for {cls.__name__}, which has no {weights} form"
        )
    return cls, spec["config"], weights


def _expected(path, cls, config, weights):
    """``{name: (dtype kinds allowed, shape)}`` the file must hold, from its configuration."""
    try:
        shapes = cls.param_shapes_for(**config)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{path}: invalid {cls.__name__} configuration: {exc}") from None
    if weights not in _QUANTIZED_FORMATS:
        return {name: ("fiu", shape) for name, shape in shapes.items()}
    expected = {}
    for name, shape in shapes.items():
        if name.startswith(("weight_ih", "weight_hh")):
            expected[name] = (_QUANTIZED_FORMATS[weights], shape)
            if weights == "int8":
                expected[name + ".scale"] = ("f", (shape[0],))
        else:
            expected[name] = ("fiu", shape)
    return expected


def load(path):
    """Load a model written by :func:`save` (or by the PyTorch bridge's ``export``).

    The file is checked before anything is allocated: its configuration must describe
    a valid model, and its tensors must be exactly that model's parameters (names,
    shapes, dtypes); then the values are checked (finite in the model's dtype).

    Raises
    ------
    FileFormatError
        A ``ValueError`` naming the file (and the tensor) for every defect: not a
        safetensors/npz file, malformed header or offsets, missing or unknown
        configuration, a newer format version, tensors that do not match.
    """
    path = _path(path)
    if not path.endswith((".safetensors", ".npz")):
        raise ValueError(f"path must end in '.safetensors' or '.npz'; got {path!r}")
    found = {}

    def expect(layout, metadata):
        cls, config, weights = _spec_of(path, metadata.get(_CONFIG_KEY))
        want = _expected(path, cls, config, weights)
        missing = sorted(set(want) - set(layout))
        unexpected = sorted(set(layout) - set(want))
        if missing or unexpected:
            raise FileFormatError(
                f"{path}: tensors do not match the {cls.__name__} the file describes: missing "
                f"{missing}, unexpected {unexpected}"
            )
        for name, (kinds, shape) in want.items():
            dtype, got = layout[name]
            if got != shape or dtype.kind not in kinds:
                raise FileFormatError(
                    f"{path}: tensor {name!r}: the configuration needs shape {shape}"
                    + {"i": " of int8", "uV": " of bfloat16"}.get(kinds, "")
                    + f"; the file has {dtype} of shape {got}"
                )
        found.update(cls=cls, config=config, weights=weights)

    if path.endswith(".safetensors"):
        tensors, _ = _read_safetensors(path, expect)
    else:
        tensors, config = _read_npz(path, expect)
        if not found:  # no configuration member: expect() was called with none
            _spec_of(path, config)
    model = found["cls"](**found["config"])
    try:
        if found["weights"] in _QUANTIZED_FORMATS:
            return model.load_quantized_state_dict(tensors, found["weights"])
        model.load_state_dict(tensors)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{path}: {exc}") from None
    return model
