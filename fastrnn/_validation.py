"""Argument checks shared by the models. Every message names the argument,
the expected shape or dtype, and what was received."""

import os

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_dtype(dtype):
    """Normalise a model ``dtype`` argument to float32 or float64 (None is refused:
    NumPy would read it as float64)."""
    if dtype is None:
        raise TypeError("dtype must be 'float32' or 'float64'; got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be 'float32' or 'float64'; got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be 'float32' or 'float64'; got {dt}")
    return dt


def positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def choice(name, value, allowed):
    """``value`` if it is one of the strings ``allowed``, else a ValueError naming ``name``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def probability(name, value):
    """A float in [0, 1] (Python or NumPy number, not bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")
    if not 0 <= float(value) <= 1:  # NaN fails too
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")
    return float(value)


def seed(value):
    """A ``numpy.random.default_rng`` seed: None or a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be None or an integer >= 0; got {value!r}")
    return int(value)


def generator(name, value):
    """A ``numpy.random.Generator`` from None, an integer seed or a Generator."""
    if value is None or isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value is not None and value < 0:
            raise ValueError(
                f"{name} must be a numpy Generator, an integer >= 0 or None; got {value!r}"
            )
        return np.random.default_rng(value)
    if isinstance(value, np.random.Generator):
        return value
    raise TypeError(
        f"{name} must be a numpy.random.Generator, an integer seed or None; "
        f"got {type(value).__name__}"
    )


def mapping(name, value):
    """A dict-like of parameter names to arrays."""
    if not hasattr(value, "keys") or not hasattr(value, "__getitem__"):
        raise TypeError(
            f"{name} must be a mapping of parameter names to arrays; got {type(value).__name__}"
        )
    return value


def to_numpy(value):
    """``np.asarray`` that also accepts torch tensors without importing torch."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def array(name, value, dtype, shape_text):
    """Check that ``value`` is an array of ``dtype`` (no silent casts)."""
    if not hasattr(value, "dtype") or not hasattr(value, "shape"):
        raise TypeError(
            f"{name} must be a numpy array of shape {shape_text} and dtype {dtype}; "
            f"got {type(value).__name__}"
        )
    value = to_numpy(value)
    if value.dtype != dtype:
        hint = f"Cast it with .astype(np.{dtype})"
        if value.dtype in FLOAT_DTYPES:
            hint += f" or build the model with dtype='{value.dtype}'"
        raise TypeError(
            f"{name} must have dtype {dtype} (the model's dtype); got {value.dtype}. {hint}."
        )
    return value


def shape(name, value, expected, shape_text=None):
    """Check an exact shape; ``expected`` is a tuple of ints."""
    if value.shape != tuple(expected):
        text = shape_text or str(tuple(expected))
        raise ValueError(f"{name} must have shape {text}; got {value.shape}")


def lengths(value, batch, seq_len):
    """Validate per-sequence lengths: integers in [1, seq_len], one per batch row."""
    arr = to_numpy(value)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.shape[0] != batch:
        raise ValueError(f"lengths must have shape ({batch},) (one per batch row); got {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"lengths must be integers; got dtype {arr.dtype}")
    if arr.size and (arr.min() < 1 or arr.max() > seq_len):
        raise ValueError(
            f"lengths must lie in [1, seq_len={seq_len}]; got min {arr.min()}, max {arr.max()}"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _physical_memory():
    """Bytes of RAM of this machine, or None where it cannot be asked."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(what, count, dtype):
    """Refuse ``count`` elements of ``dtype`` that cannot fit in this machine's memory,
    before anything is allocated; ``what`` starts the message."""
    need = count * np.dtype(dtype).itemsize
    have = _physical_memory()
    if have is not None and need > have:
        raise ValueError(
            f"{what}: {need / 2**30:,.1f} GiB of {np.dtype(dtype).name}, more than this "
            f"machine's {have / 2**30:,.1f} GiB of memory"
        )


def parameter_memory(model, count):
    """Refuse a configuration whose ``count`` parameters cannot fit in this machine's
    memory, before anything is allocated (a typo such as ``num_layers=10**9`` must not
    start allocating)."""
    fits_in_memory(
        f"{type(model).__name__} with this configuration has {count:,} parameters",
        count,
        model.dtype,
    )


def device_array(name, value, dtype, shape_text, why="the model's dtype"):
    """A device array of ``dtype`` (host arrays are copied over; no silent casts)."""
    from .cuda import as_device_array, to_device

    if not hasattr(value, "dtype") or not hasattr(value, "shape"):
        raise TypeError(
            f"{name} must be an array of shape {shape_text} and dtype {dtype}; "
            f"got {type(value).__name__}"
        )
    if np.dtype(value.dtype) != dtype:
        raise TypeError(f"{name} must have dtype {dtype} ({why}); got {value.dtype}")
    if isinstance(value, np.ndarray):
        return to_device(value)
    return as_device_array(value)
