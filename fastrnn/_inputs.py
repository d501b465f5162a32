"""The models' checks of what a user passes (inputs, states, gradients, dropout masks),
for NumPy arrays and for device arrays, and the reshaping of results to torch's layouts.

Every check names the argument and what was expected. The engine below trusts what
comes out of here: contiguous (T, B, ·) arrays of the model's dtype.
"""

import numpy as np

from . import _validation as check

#: Names used in messages for LSTM's two state parts and the single state of GRU/RNN.
STATE_NAMES = ("h0", "c0", "hx")
GRAD_STATE_NAMES = ("grad_state[0] (h_n)", "grad_state[1] (c_n)", "grad_state")


def _shape_text(model):
    order = "(batch, seq_len, {0})" if model.batch_first else "(seq_len, batch, {0})"
    return order.format(model.input_size)


def _split_state(model, hx, names):
    """``[(name, part)]`` of a state: ``(h, c)`` for LSTM, the single array otherwise."""
    if model.mode == "LSTM":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(
                f"{names[0].split('[')[0]} for LSTM must be a tuple (h, c); got {type(hx).__name__}"
            )
        return [(names[0], hx[0]), (names[1], hx[1])]
    if isinstance(hx, (tuple, list)):
        raise TypeError(
            f"{names[2]} for {model.mode} must be a single array; got a {type(hx).__name__}"
        )
    return [(names[2], hx)]


def _checked_parts(model, value, batch, unbatched, names):
    """The parts of a state (see :func:`_split_state`), each checked for the model's dtype
    and torch's state shape; not copied."""
    want = model.spec.state_shapes(None if unbatched else batch)
    parts = []
    for (name, part), shape in zip(_split_state(model, value, names), want):
        part = check.array(name, part, model.dtype, shape)
        check.shape(name, part, shape)
        parts.append(part)
    return parts


# ----------------------------------------------------------------------------- host


def sequence(model, x):
    """Validate ``x``; return ``(x as (T, B, I) contiguous, unbatched)``."""
    shape_text = _shape_text(model)
    x = check.array("input", x, model.dtype, shape_text)
    if x.ndim not in (2, 3):
        raise ValueError(
            f"input must have shape {shape_text} or (seq_len, {model.input_size}) "
            f"unbatched; got {x.ndim}-D shape {x.shape}"
        )
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None]
    elif model.batch_first:
        x = x.transpose(1, 0, 2)
    if x.shape[2] != model.input_size:
        raise ValueError(
            f"input must have shape {shape_text}; got {x.shape[-1]} features "
            f"(input_size={model.input_size})"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"input must have seq_len >= 1 and batch >= 1; got shape {x.shape}")
    return np.ascontiguousarray(x), unbatched


def state(model, hx, batch, unbatched, names=STATE_NAMES):
    """Validate ``hx`` and return contiguous copies ``(h, c)`` with a batch axis (zeros
    for None; ``c`` zeros for GRU/RNN)."""
    if hx is None:
        h_shape, c_shape = model.spec.state_shapes(batch)
        return np.zeros(h_shape, model.dtype), np.zeros(c_shape, model.dtype)
    out = [
        np.array(part[:, None] if unbatched else part, order="C", copy=True)
        for part in _checked_parts(model, hx, batch, unbatched, names)
    ]
    if len(out) == 1:
        out.append(np.zeros(out[0].shape[:2] + (model.hidden_size,), model.dtype))
    return out[0], out[1]


def streaming_state(model, value, B, unbatched):
    """Validate a ``step`` state without copying it: ``(h, c)`` or ``(None, None)``."""
    if value is None:
        return None, None
    names = ("state[0] (h)", "state[1] (c)", "state")
    parts = _checked_parts(model, value, B, unbatched, names)
    h_in = parts[0]
    return h_in, (parts[1] if len(parts) == 2 else h_in[..., :0])


def grad_output(model, grad_y, tape):
    """``grad_y`` in the internal (T, B, D·P) layout; zeros for None."""
    T, B = tape.layer_inputs[0].shape[:2]
    if grad_y is None:
        return np.zeros((T, B, model.num_directions * model.output_size), model.dtype)
    grad_y = check.array("grad_y", grad_y, model.dtype, str(tape.y_shape))
    check.shape("grad_y", grad_y, tape.y_shape)
    if tape.unbatched:
        return np.ascontiguousarray(grad_y[:, None])
    return np.ascontiguousarray(grad_y.transpose(1, 0, 2) if model.batch_first else grad_y)


def output(model, y, unbatched):
    """``y`` (T, B, F) in the user's layout."""
    if unbatched:
        return y[:, 0]
    return np.ascontiguousarray(y.transpose(1, 0, 2)) if model.batch_first else y


def pack_state(model, h, c, unbatched):
    if unbatched:
        h, c = h[:, 0], c[:, 0]
    return (h, c) if model.mode == "LSTM" else h


def dropout_masks(model, masks, rng, T, B, unbatched):
    """Inter-layer keep-masks in (T, B, features) layout (unscaled), or []."""
    if model.dropout == 0 or model.num_layers == 1:
        if masks is not None and len(masks):
            raise ValueError(
                "dropout_masks given, but the model applies no inter-layer "
                f"dropout (dropout={model.dropout}, num_layers={model.num_layers})"
            )
        return []
    F = model.num_directions * model.output_size
    n = model.num_layers - 1
    if masks is None:
        rng = check.generator("rng", rng)
        return [rng.random((T, B, F)) >= model.dropout for _ in range(n)]
    if len(masks) != n:
        raise ValueError(f"dropout_masks must hold num_layers - 1 = {n} arrays; got {len(masks)}")
    if unbatched:
        expected = (T, F)
    else:
        expected = (B, T, F) if model.batch_first else (T, B, F)
    out = []
    for i, mask in enumerate(masks):
        mask = check.to_numpy(mask)
        if mask.shape != expected:
            raise ValueError(
                f"dropout_masks[{i}] must have shape {expected} (like the "
                f"layer output); got {mask.shape}"
            )
        if unbatched:
            mask = mask.reshape(T, 1, F)
        elif model.batch_first:
            mask = mask.transpose(1, 0, 2)
        out.append(mask)
    return out
