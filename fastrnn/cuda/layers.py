"""Multi-layer RNN/LSTM/GRU on device arrays: the GPU twin of ``fastrnn/layers.py``.

The models (``fastrnn.RNN/LSTM/GRU``) send device inputs here. Per layer and
direction: one input-projection product over the whole sequence
(``linalg.gemm``), the recurrence (``recurrence.run_forward``), and in the
backward pass the recurrence walked back (``recurrence.run_backward``) followed
by every weight gradient as one product over all steps. Same tape contents
and the same argument checks as the CPU engine.
"""

import numpy as np

from .. import _validation as check
from ..training import Gradients, Tape
from . import _device, linalg, recurrence

_KIND = {"LSTM": 0, "GRU": 1, "RNN": 2}


# ----------------------------------------------------------------------------- arrays


def _array(name, value, dtype, shape_text, why="the model's dtype"):
    """A device array of ``dtype`` (host arrays are copied over; no silent casts)."""
    if not hasattr(value, "dtype") or not hasattr(value, "shape"):
        raise TypeError(
            f"{name} must be an array of shape {shape_text} and dtype {dtype}; "
            f"got {type(value).__name__}"
        )
    if np.dtype(value.dtype) != dtype:
        raise TypeError(f"{name} must have dtype {dtype} ({why}); got {value.dtype}")
    if isinstance(value, np.ndarray):
        return _device.to_device(value)
    from . import as_device_array

    return as_device_array(value)


def _dummy(dtype, ndim, size=1):
    return _device.empty((size,) * ndim, dtype)


def device_params(model):
    """The model's parameters as device arrays: the resident copy of ``to_device()``,
    else copies made now."""
    resident = getattr(model, "_device_params", None)
    if resident is not None:
        return resident
    return {name: _device.to_device(p) for name, p in model._params.items()}


def _cell_params(model, params, layer, d):
    sfx = f"_l{layer}" + ("_reverse" if d else "")
    G, H = recurrence.GATES[_KIND[model.mode]], model.hidden_size
    if model.bias:
        b_ih, b_hh = params[f"bias_ih{sfx}"], params[f"bias_hh{sfx}"]
    else:
        b_ih = b_hh = linalg.zeros((G * H,), model.dtype)
    w_hr = params[f"weight_hr{sfx}"] if model.proj_size else _device.empty((0, H), model.dtype)
    return params[f"weight_ih{sfx}"], params[f"weight_hh{sfx}"], b_ih, b_hh, w_hr


# ----------------------------------------------------------------------------- checks


def _check_input(model, x):
    """``x`` as a contiguous (T, B, I) device array, and whether it was unbatched."""
    shape_text = ("(batch, seq_len, {0})" if model.batch_first else "(seq_len, batch, {0})").format(
        model.input_size
    )
    x = _array("input", x, model.dtype, shape_text)
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


def _check_state(model, hx, B, unbatched, names=("h0", "c0", "hx")):
    """Contiguous device copies ``(h, c)`` with a batch axis (zeros for None)."""
    h_shape, c_shape = model._state_shapes(B)
    if hx is None:
        return linalg.zeros(h_shape, model.dtype), linalg.zeros(c_shape, model.dtype)
    want_h, want_c = model._state_shapes(None if unbatched else B)
    if model.mode == "LSTM":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(
                f"{names[0].split('[')[0]} for LSTM must be a tuple (h, c); got {type(hx).__name__}"
            )
        parts = [(names[0], hx[0], want_h, h_shape), (names[1], hx[1], want_c, c_shape)]
    else:
        if isinstance(hx, (tuple, list)):
            raise TypeError(
                f"{names[2]} for {model.mode} must be a single array; got a {type(hx).__name__}"
            )
        parts = [(names[2], hx, want_h, h_shape)]
    out = []
    for name, value, want, full in parts:
        on_host = isinstance(value, np.ndarray)
        value = _array(name, value, model.dtype, str(want))
        if tuple(value.shape) != want:
            raise ValueError(f"{name} must have shape {want}; got {tuple(value.shape)}")
        # the drivers update states in place: never the caller's own device memory
        out.append((value if on_host else linalg.copy(value)).reshape(full))
    if len(out) == 1:
        out.append(linalg.zeros(c_shape, model.dtype))
    return out[0], out[1]


def _lengths(lengths, B, T):
    if lengths is None:
        host = np.full(B, T, np.int64)
    else:
        if not isinstance(lengths, np.ndarray) and hasattr(lengths, "copy_to_host"):
            lengths = lengths.copy_to_host()
        host = check.lengths(lengths, B, T)
    return host, _device.to_device(host)


def _pack_output(model, y, unbatched):
    if unbatched:
        return y.reshape((y.shape[0], y.shape[2]))
    return linalg.swap01(y) if model.batch_first else y


def _pack_state(model, h, c, unbatched):
    if unbatched:
        h, c = h.reshape((h.shape[0], h.shape[2])), c.reshape((c.shape[0], c.shape[2]))
    return (h, c) if model.mode == "LSTM" else h


# ----------------------------------------------------------------------------- forward


def run(model, params, x, h, c, lens, tape=None, masks=(), plan=None):
    """All layers over contiguous device ``x`` (T, B, I); ``h``/``c`` become the final
    state. Records the tape (device arrays) when ``tape`` is given, and then applies
    its inter-layer dropout masks."""
    if tape is not None:
        masks = tape.masks
    T, B, _ = x.shape
    D, P, H = model.num_directions, model.output_size, model.hidden_size
    kind = _KIND[model.mode]
    G, TG = recurrence.GATES[kind], recurrence.TAPE_GATES[kind]
    dt = model.dtype
    proj = model.proj_size > 0
    plan = plan or recurrence.Plan(H, P, G, dt.itemsize)
    layer_input = x
    for layer in range(model.num_layers):
        if tape is not None:
            tape.layer_inputs.append(layer_input)
        out = _device.empty((T, B, D * P), dt)
        X = layer_input.reshape((T * B, layer_input.shape[2]))
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh, w_hr = _cell_params(model, params, layer, d)
            gx = _device.empty((T, B, G * H), dt)
            linalg.gemm(X, w_ih, gx.reshape((T * B, G * H)), trans_b=True)
            h_buf = _device.empty((2, B, P), dt)
            linalg.copy(h[k], h_buf[0])
            if tape is not None:
                tapes = (
                    _device.empty((T, B, TG * H), dt),
                    _device.empty((T, B, P), dt),
                    _device.empty((T if kind == 0 else 0, B, H), dt),
                )
                tape.steps.append(tapes)
            else:
                tapes = (_dummy(dt, 3), _device.empty((0, 1, 1), dt), _dummy(dt, 3))
            recurrence.run_forward(
                kind,
                model._mode_code,
                gx,
                linalg.transpose(w_hh),
                b_ih,
                b_hh,
                linalg.transpose(w_hr) if proj else _device.empty((0, P), dt),
                h_buf,
                c[k],
                _device.empty((B, H), dt) if proj else _dummy(dt, 2),
                out[:, :, d * P : (d + 1) * P],
                lens,
                bool(d),
                tapes,
                plan,
            )
            linalg.copy(h_buf[T % 2], h[k])
        layer_input = out
        if layer < len(masks):
            layer_input = linalg.multiply(out, masks[layer])
    return layer_input


def forward(model, x, hx=None, lengths=None):
    """``model(x, hx, lengths)`` for device ``x``: device outputs, torch's shapes."""
    x, unbatched = _check_input(model, x)
    T, B, _ = x.shape
    h, c = _check_state(model, hx, B, unbatched)
    _, lens = _lengths(lengths, B, T)
    y = run(model, device_params(model), x, h, c, lens)
    return _pack_output(model, y, unbatched), _pack_state(model, h, c, unbatched)


def _device_masks(model, masks, rng, T, B, unbatched):
    if masks is not None:
        masks = [m.copy_to_host() if hasattr(m, "copy_to_host") else m for m in masks]
    return [_device.to_device(m) for m in model._dropout_masks(masks, rng, T, B, unbatched)]


def forward_train(model, x, hx=None, lengths=None, dropout_masks=None, rng=None):
    """``model.forward_train`` for device ``x``; the tape holds device arrays."""
    x, unbatched = _check_input(model, x)
    T, B, _ = x.shape
    h, c = _check_state(model, hx, B, unbatched)
    host_lens, lens = _lengths(lengths, B, T)
    tape = Tape(id(model), model._signature(), None, unbatched, host_lens, device=lens)
    tape.weights_version = model.weights_version
    tape.masks = _device_masks(model, dropout_masks, rng, T, B, unbatched)
    y = run(model, device_params(model), x, h, c, lens, tape)
    y = _pack_output(model, y, unbatched)
    tape.y_shape = tuple(y.shape)
    return y, _pack_state(model, h, c, unbatched), tape


# ----------------------------------------------------------------------------- backward


def run_backward(
    model, params, tape, dy_all, dh_all, dc_all, input_grad=True, param_grads=True, plan=None
):
    """BPTT on the device (the twin of ``layers._RNNBase._backward``): ``dh_all`` /
    ``dc_all`` enter as final-state gradients and leave as initial-state ones.
    Returns ``(grad_x (T, B, I) or None, params or None)``."""
    T, B = tape.layer_inputs[0].shape[:2]
    D, P, H = model.num_directions, model.output_size, model.hidden_size
    kind = _KIND[model.mode]
    G = recurrence.GATES[kind]
    dt = model.dtype
    proj = model.proj_size > 0
    plan = plan or recurrence.Plan(H, P, G, dt.itemsize)
    lens = tape.device
    wanted = set(model._params) if param_grads is True else set(param_grads or ())
    grads = {}
    for name in model._params if wanted else ():
        grads[name] = (
            _device.empty(model._params[name].shape, dt)
            if name in wanted
            else linalg.zeros(model._params[name].shape, dt)
        )

    def product(name, a, b):
        if name in wanted:
            linalg.gemm(a, b, grads[name], trans_a=True)

    def column_sum(name, a):
        if name in wanted:
            linalg.column_sum(a, grads[name])

    for layer in reversed(range(model.num_layers)):
        layer_in = tape.layer_inputs[layer]
        X = layer_in.reshape((T * B, layer_in.shape[2]))
        need_dx = layer > 0 or input_grad
        d_input = _device.empty((T, B, X.shape[1]), dt) if need_dx else None
        for d in range(D):
            k = layer * D + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh, _, _, w_hr = _cell_params(model, params, layer, d)
            gates, h_prev, c_prev = tape.steps[k]
            dy = dy_all[:, :, d * P : (d + 1) * P]
            dgx = _device.empty((T, B, G * H), dt)
            dgh = _device.empty((T, B, G * H), dt) if kind == 1 else dgx
            dhp = _device.empty((T, B, P), dt) if proj else _dummy(dt, 3)
            mt = _device.empty((T, B, H), dt) if proj else _dummy(dt, 3)
            dh_buf = _device.empty((2, B, P), dt)
            first = 0 if d else T - 1
            _device.launch(
                recurrence.seed_kernel,
                linalg._blocks(B * P),
                linalg.THREADS,
                dh_buf[0],
                dh_all[k],
                dy,
                first,
                lens,
            )
            recurrence.run_backward(
                kind,
                model._mode_code,
                gates,
                h_prev,
                c_prev,
                w_hh,
                w_hr,
                proj,
                dy,
                dh_buf,
                dc_all[k],
                dgx,
                dgh,
                dhp,
                mt,
                lens,
                bool(d),
                plan,
            )
            linalg.copy(dh_buf[T % 2], dh_all[k])
            dgx2 = dgx.reshape((T * B, G * H))
            dgh2 = dgh.reshape((T * B, G * H))
            product(f"weight_ih{sfx}", dgx2, X)
            product(f"weight_hh{sfx}", dgh2, h_prev.reshape((T * B, P)))
            column_sum(f"bias_ih{sfx}", dgx2)
            column_sum(f"bias_hh{sfx}", dgh2)
            if proj:
                product(f"weight_hr{sfx}", dhp.reshape((T * B, P)), mt.reshape((T * B, H)))
            if need_dx:
                linalg.gemm(
                    dgx2, w_ih, d_input.reshape((T * B, X.shape[1])), beta=1.0 if d else 0.0
                )
        if not need_dx:
            return None, grads or None
        if layer > 0 and layer - 1 < len(tape.masks):
            d_input = linalg.multiply(d_input, tape.masks[layer - 1])
        dy_all = d_input
    return dy_all, grads or None


def backward(model, tape, grad_y=None, grad_state=None):
    """``model.backward`` for a device tape: device gradients."""
    T, B = tape.layer_inputs[0].shape[:2]
    D, P = model.num_directions, model.output_size
    if grad_y is None:
        dy_all = linalg.zeros((T, B, D * P), model.dtype)
    else:
        dy = _array("grad_y", grad_y, model.dtype, str(tape.y_shape))
        if tuple(dy.shape) != tuple(tape.y_shape):
            raise ValueError(f"grad_y must have shape {tape.y_shape}; got {tuple(dy.shape)}")
        dy = linalg.reshaped(dy, dy.shape)
        if tape.unbatched:
            dy_all = dy.reshape((T, 1, D * P))
        else:
            dy_all = linalg.swap01(dy) if model.batch_first else dy
    names = ("grad_state[0] (h_n)", "grad_state[1] (c_n)", "grad_state")
    dh_all, dc_all = _check_state(model, grad_state, B, tape.unbatched, names)
    grad_x, params = run_backward(model, device_params(model), tape, dy_all, dh_all, dc_all)
    grad_x = _pack_output(model, grad_x, tape.unbatched)
    return Gradients(grad_x, _pack_state(model, dh_all, dc_all, tape.unbatched), params)
