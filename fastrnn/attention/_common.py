"""What every scoring rule shares: the tape, argument checks, mask splitting, and the
dispatch of device arrays to the CUDA twin of a function."""

import functools
import importlib
from dataclasses import dataclass

import numpy as np

from .. import _validation as check
from ..cuda import is_device_array


@dataclass
class AttentionTape:
    """What an attention ``*_backward`` needs from its ``*_train``."""

    kind: str
    saved: dict


def _device_twin(fn):
    """Send device arrays (and tapes recorded on the device) to the function of the same
    name in the CUDA twin of ``fn``'s module (``sdpa`` -> ``sdpa_cuda``), imported on
    first use (it compiles CUDA kernels)."""

    @functools.wraps(fn)
    def dispatch(first, *args, **kwargs):
        if isinstance(first, AttentionTape):
            on_device = first.saved.get("device", False)
        else:
            on_device = type(first) is not np.ndarray and is_device_array(first)
        if on_device:
            twin = importlib.import_module(fn.__module__ + "_cuda")
            return getattr(twin, fn.__name__)(first, *args, **kwargs)
        return fn(first, *args, **kwargs)

    return dispatch


def _floats(names, arrays, dtype=None):
    """Check that the named arrays are float32/float64 arrays of one dtype."""
    out = []
    for name, a in zip(names, arrays):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{name} must be a numpy array; got {type(a).__name__}")
        a = check.to_numpy(a)
        if a.dtype not in check.FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64; got {a.dtype}")
        dtype = dtype or a.dtype
        if a.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype} (like {names[0]}); got {a.dtype}")
        out.append(a)
    return out


def _mask4(mask, batch, Lq, Lk, B0, B1, dtype):
    """Split a user mask into (additive float, bool) 4-D views over (B0, B1, Lq, Lk)."""
    none_f = np.empty((0, 0, 0, 0), dtype)
    none_b = np.empty((0, 0, 0, 0), np.bool_)
    if mask is None:
        return none_f, none_b
    mask = check.to_numpy(mask)
    target = tuple(batch) + (Lq, Lk)
    try:
        full = np.broadcast_to(mask, target)
    except ValueError:
        raise ValueError(
            f"mask must be broadcastable to {target} (batch..., Lq, Lk); got {mask.shape}"
        ) from None
    full = full.reshape(B0, B1, Lq, Lk)
    if mask.dtype == np.bool_:
        return none_f, full
    if mask.dtype.kind in "iu":
        return none_f, full != 0
    if mask.dtype.kind == "f":
        return full.astype(dtype, copy=False), none_b
    raise TypeError(f"mask must be bool (True = attend) or a float additive mask; got {mask.dtype}")


def _unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach ``shape``."""
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


def _tape(tape, kind):
    if not isinstance(tape, AttentionTape) or tape.kind != kind:
        raise TypeError(
            f"tape must come from the matching *_train function ({kind}); got "
            f"{getattr(tape, 'kind', type(tape).__name__)}"
        )
    return tape.saved
