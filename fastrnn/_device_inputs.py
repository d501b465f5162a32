"""The device twins of :mod:`fastrnn._inputs`: the models' checks of device arrays
(``__cuda_array_interface__``), with the same messages. Host arrays given beside a
device input are copied over; nothing is cast."""

import numpy as np

from . import _validation as check
from ._inputs import STATE_NAMES, _shape_text, _split_state
from .cuda import _device, linalg

array = check.device_array


def params(model):
    """The model's parameters as device arrays: the resident copy of ``to_device()``,
    else copies made now."""
    resident = model._device_params
    if resident is not None:
        return resident
    return {name: _device.to_device(p) for name, p in model.state_dict().items()}


def sequence(model, x):
    """``x`` as a contiguous (T, B, I) device array, and whether it was unbatched."""
    shape_text = _shape_text(model)
    x = array("input", x, model.dtype, shape_text)
    if x.ndim not in (2, 3) or x.shape[x.ndim - 1] != model.input_size:
        raise ValueError(
            f"input must have shape {shape_text} or (seq_len, {model.input_size}) "
            f"unbatched; got shape {tuple(x.shape)}"
        )
    unbatched = x.ndim == 2
    x = linalg.reshaped(x, x.shape)
    if unbatched:
        x = x.reshape((x.shape[0], 1, x.shape[1]))
    elif model.batch_first:
        x = linalg.swap01(x)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"input must have seq_len >= 1 and batch >= 1; got shape {x.shape}")
    return x, unbatched


def state(model, hx, B, unbatched, names=STATE_NAMES):
    """Contiguous device copies ``(h, c)`` with a batch axis (zeros for None)."""
    h_shape, c_shape = model.spec.state_shapes(B)
    if hx is None:
        return linalg.zeros(h_shape, model.dtype), linalg.zeros(c_shape, model.dtype)
    want = model.spec.state_shapes(None if unbatched else B)
    out = []
    for (name, value), shape, full in zip(_split_state(model, hx, names), want, (h_shape, c_shape)):
        on_host = isinstance(value, np.ndarray)
        value = array(name, value, model.dtype, str(shape))
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}; got {tuple(value.shape)}")
        # the engine updates states in place: never the caller's own device memory
        out.append((value if on_host else linalg.copy(value)).reshape(full))
    if len(out) == 1:
        out.append(linalg.zeros(c_shape, model.dtype))
    return out[0], out[1]


def lengths(value, B, T):
    """The lengths as a device array, checked on the host."""
    if value is None:
        host = np.full(B, T, np.int64)
    else:
        if not isinstance(value, np.ndarray) and hasattr(value, "copy_to_host"):
            value = value.copy_to_host()
        host = check.lengths(value, B, T)
    return _device.to_device(host)


def grad_output(model, grad_y, tape):
    T, B = tape.layer_inputs[0].shape[:2]
    if grad_y is None:
        return linalg.zeros((T, B, model.num_directions * model.output_size), model.dtype)
    dy = array("grad_y", grad_y, model.dtype, str(tape.y_shape))
    if tuple(dy.shape) != tuple(tape.y_shape):
        raise ValueError(f"grad_y must have shape {tape.y_shape}; got {tuple(dy.shape)}")
    dy = linalg.reshaped(dy, dy.shape)
    if tape.unbatched:
        return dy.reshape((T, 1, dy.shape[dy.ndim - 1]))
    return linalg.swap01(dy) if model.batch_first else dy


def output(model, y, unbatched):
    if unbatched:
        return y.reshape((y.shape[0], y.shape[2]))
    return linalg.swap01(y) if model.batch_first else y


def pack_state(model, h, c, unbatched):
    if unbatched:
        h, c = h.reshape((h.shape[0], h.shape[2])), c.reshape((c.shape[0], c.shape[2]))
    return (h, c) if model.mode == "LSTM" else h


def masks(scaled):
    return [_device.to_device(m) for m in scaled]
