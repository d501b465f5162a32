"""Plain-NumPy reference: the specification the fast kernels are tested against.

Everything here is written the most obvious way, one time step and one
sequence at a time, with the gate equations exactly as the torch.nn
documentation states them. It is slow on purpose and has no Numba in it.

Parameters are passed as a ``state_dict`` with torch's names
(``weight_ih_l0``, ``bias_hh_l1_reverse``, ``weight_hr_l0``, ...).
"""

import numpy as np

__all__ = [
    "sigmoid",
    "lstm_cell",
    "gru_cell",
    "rnn_cell",
    "forward",
    "lstm_cell_backward",
    "gru_cell_backward",
    "rnn_cell_backward",
    "backward",
]


def sigmoid(x):
    """Numerically safe logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    """One LSTM step; returns ``(h', c')``. Shapes: x (B, I), h (B, P), c (B, H)."""
    gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = np.split(gates, 4, axis=-1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.T
    return h_new, c_new


def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step; returns ``h'``."""
    xr, xz, xn = np.split(x @ w_ih.T + b_ih, 3, axis=-1)
    hr, hz, hn = np.split(h @ w_hh.T + b_hh, 3, axis=-1)
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


def rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """One Elman RNN step; returns ``h'``."""
    pre = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    return np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0.0)


def _cell_params(params, layer, direction, hidden_size, gates):
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    w_ih = params[f"weight_ih{sfx}"]
    w_hh = params[f"weight_hh{sfx}"]
    zeros = np.zeros(gates * hidden_size, dtype=w_ih.dtype)
    b_ih = params.get(f"bias_ih{sfx}", zeros)
    b_hh = params.get(f"bias_hh{sfx}", zeros)
    w_hr = params.get(f"weight_hr{sfx}")
    return w_ih, w_hh, b_ih, b_hh, w_hr


def forward(
    mode,
    params,
    x,
    hx=None,
    *,
    hidden_size,
    num_layers=1,
    bidirectional=False,
    proj_size=0,
    nonlinearity="tanh",
    lengths=None,
):
    """Full multi-layer forward in torch's layout.

    Parameters
    ----------
    mode : {"LSTM", "GRU", "RNN"}
    params : dict of str to ndarray
        torch-named parameters.
    x : ndarray, shape (seq_len, batch, input_size)
    hx : ndarray or tuple of ndarray, optional
        ``h0`` of shape (num_layers * num_directions, batch, H_out), plus
        ``c0`` of shape (num_layers * num_directions, batch, hidden_size) for LSTM.
    lengths : sequence of int, optional
        Valid length of each sequence; outputs past it are zero and the
        final state is the state after its last valid step.

    Returns
    -------
    y : ndarray, shape (seq_len, batch, num_directions * H_out)
    h_n : ndarray, or ``(h_n, c_n)`` for LSTM
    """
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = hidden_size
    P = proj_size or H
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[mode]
    if lengths is None:
        lengths = [T] * B
    if hx is None:
        h0 = np.zeros((num_layers * D, B, P), x.dtype)
        c0 = np.zeros((num_layers * D, B, H), x.dtype)
    elif mode == "LSTM":
        h0, c0 = hx
    else:
        h0, c0 = hx, None
    h_n = np.zeros((num_layers * D, B, P), x.dtype)
    c_n = np.zeros((num_layers * D, B, H), x.dtype)
    layer_input = x
    for layer in range(num_layers):
        out = np.zeros((T, B, D * P), x.dtype)
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr = _cell_params(params, layer, d, H, gates)
            k = layer * D + d
            for b in range(B):  # one sequence at a time: no masking needed
                n = lengths[b]
                h = h0[k, b : b + 1]
                c = c0[k, b : b + 1] if mode == "LSTM" else None
                steps = range(n - 1, -1, -1) if d else range(n)
                for t in steps:
                    xt = layer_input[t, b : b + 1]
                    if mode == "LSTM":
                        h, c = lstm_cell(xt, h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
                    elif mode == "GRU":
                        h = gru_cell(xt, h, w_ih, w_hh, b_ih, b_hh)
                    else:
                        h = rnn_cell(xt, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
                    out[t, b, d * P : (d + 1) * P] = h[0]
                h_n[k, b] = h[0]
                if mode == "LSTM":
                    c_n[k, b] = c[0]
        layer_input = out
    return layer_input, ((h_n, c_n) if mode == "LSTM" else h_n)


# ============================================================================ BPTT
#
# Backpropagation through time, derived one step at a time. A step maps
# (x, h, c) to (h', c'); given the gradients dh', dc' of the loss w.r.t. its
# outputs, the step's backward returns the gradients w.r.t. its inputs and
# its parameters. Running the steps in reverse order, adding each step's dh
# (and dc) to the next-earlier step's output gradient, is BPTT. Parameter
# gradients are summed over steps (and over the sequences of a batch).


def lstm_cell_backward(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, dh_new, dc_new):
    """Gradients of one LSTM step.

    Forward (see :func:`lstm_cell`): a = x W_ih^T + b_ih + h W_hh^T + b_hh split
    into i, f, g, o; c' = f c + i g; m = o tanh(c'); h' = m W_hr^T (or m).
    Backward, by the chain rule:

        dm   = dh' W_hr            (or dh')           dW_hr = dh'^T m
        do   = dm tanh(c')
        dc'  = dc_new + dm o (1 - tanh(c')^2)         (c' feeds m and the next step)
        di   = dc' g,  df = dc' c,  dg = dc' i,  dc = dc' f
        da   = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]   (sigmoid' = s(1-s), tanh' = 1-t^2)
        dx   = da W_ih,  dh = da W_hh,  dW_ih = da^T x,  dW_hh = da^T h,  db_ih = db_hh = sum(da)

    Returns
    -------
    dx, dh, dc, dict of parameter gradients (``w_ih, w_hh, b_ih, b_hh``, ``w_hr``).
    """
    a = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = np.split(a, 4, axis=-1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    c_new = f * c + i * g
    tc = np.tanh(c_new)
    m = o * tc
    grads = {}
    if w_hr is not None:
        grads["w_hr"] = dh_new.T @ m
        dm = dh_new @ w_hr
    else:
        dm = dh_new
    do = dm * tc
    dc_total = dc_new + dm * o * (1.0 - tc**2)
    da = np.concatenate(
        [
            dc_total * g * i * (1 - i),
            dc_total * c * f * (1 - f),
            dc_total * i * (1 - g**2),
            do * o * (1 - o),
        ],
        axis=-1,
    )
    grads.update(w_ih=da.T @ x, w_hh=da.T @ h, b_ih=da.sum(0), b_hh=da.sum(0))
    return da @ w_ih, da @ w_hh, dc_total * f, grads


def gru_cell_backward(x, h, w_ih, w_hh, b_ih, b_hh, dh_new):
    """Gradients of one GRU step.

    Forward (see :func:`gru_cell`): with gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh
    split into r, z, n parts: r = s(gi_r + gh_r), z = s(gi_z + gh_z),
    n = tanh(gi_n + r gh_n), h' = (1 - z) n + z h. Backward:

        dn = dh' (1 - z);  dz = dh' (h - n);  dh = dh' z  (direct path)
        dgi_n = dn (1 - n^2);  dgh_n = dgi_n r;  dr = dgi_n gh_n
        dgi_r = dgh_r = dr r (1 - r);  dgi_z = dgh_z = dz z (1 - z)
        dx = dgi W_ih;  dh += dgh W_hh;  dW_ih = dgi^T x;  dW_hh = dgh^T h

    The input side and hidden side differ only in the n block.
    """
    gi = x @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    gi_r, gi_z, gi_n = np.split(gi, 3, axis=-1)
    gh_r, gh_z, gh_n = np.split(gh, 3, axis=-1)
    r, z = sigmoid(gi_r + gh_r), sigmoid(gi_z + gh_z)
    n = np.tanh(gi_n + r * gh_n)
    dn = dh_new * (1 - z)
    dz = dh_new * (h - n)
    dgi_n = dn * (1 - n**2)
    dr = dgi_n * gh_n
    dgr, dgz = dr * r * (1 - r), dz * z * (1 - z)
    dgi = np.concatenate([dgr, dgz, dgi_n], axis=-1)
    dgh = np.concatenate([dgr, dgz, dgi_n * r], axis=-1)
    grads = dict(w_ih=dgi.T @ x, w_hh=dgh.T @ h, b_ih=dgi.sum(0), b_hh=dgh.sum(0))
    return dgi @ w_ih, dh_new * z + dgh @ w_hh, grads


def rnn_cell_backward(x, h, w_ih, w_hh, b_ih, b_hh, dh_new, nonlinearity="tanh"):
    """Gradients of one Elman step: da = dh' act'(a); dx = da W_ih; dh = da W_hh."""
    a = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    da = dh_new * (1 - np.tanh(a) ** 2) if nonlinearity == "tanh" else dh_new * (a > 0)
    grads = dict(w_ih=da.T @ x, w_hh=da.T @ h, b_ih=da.sum(0), b_hh=da.sum(0))
    return da @ w_ih, da @ w_hh, grads


def backward(
    mode,
    params,
    x,
    hx,
    grad_y,
    grad_state,
    *,
    hidden_size,
    num_layers=1,
    bidirectional=False,
    proj_size=0,
    nonlinearity="tanh",
    lengths=None,
    dropout_masks=None,
):
    """Full BPTT of :func:`forward`, one sequence and one step at a time.

    Parameters
    ----------
    mode, params, x, hx, hidden_size, num_layers, bidirectional, proj_size,
    nonlinearity, lengths
        As for :func:`forward` (``hx`` may not be None here).
    grad_y : ndarray, shape (seq_len, batch, num_directions * H_out)
    grad_state : ndarray or tuple of ndarray
        Gradient w.r.t. ``h_n`` (and ``c_n`` for LSTM).
    dropout_masks : list of ndarray, optional
        Scaled inter-layer masks (seq_len, batch, features): layer ``l + 1``
        sees ``output_l * dropout_masks[l]``.

    Returns
    -------
    grad_x, grad_hx (like ``hx``), dict of parameter gradients (torch names).
    """
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H, P = hidden_size, proj_size or hidden_size
    lengths = [T] * B if lengths is None else list(lengths)
    masks = dropout_masks or []
    lstm = mode == "LSTM"
    h0, c0 = hx if lstm else (hx, None)
    gh_n, gc_n = grad_state if lstm else (grad_state, None)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    grad_x = np.zeros_like(x)
    dh0 = np.zeros_like(h0)
    dc0 = np.zeros_like(c0) if lstm else None
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[mode]
    for b in range(B):
        n = lengths[b]
        # Forward, remembering every layer's input and each step's incoming state.
        inputs, caches = [x[:n, b : b + 1]], {}
        for layer in range(num_layers):
            out = np.zeros((n, 1, D * P), x.dtype)
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh, w_hr = _cell_params(params, layer, d, H, gates)
                h = h0[k, b : b + 1]
                c = c0[k, b : b + 1] if lstm else None
                steps = list(range(n - 1, -1, -1)) if d else list(range(n))
                for t in steps:
                    caches[k, t] = (h, c)
                    xt = inputs[layer][t]
                    if lstm:
                        h, c = lstm_cell(xt, h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
                    elif mode == "GRU":
                        h = gru_cell(xt, h, w_ih, w_hh, b_ih, b_hh)
                    else:
                        h = rnn_cell(xt, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
                    out[t, 0, d * P : (d + 1) * P] = h[0]
            if layer < num_layers - 1 and layer < len(masks):
                out = out * masks[layer][:n, b : b + 1]
            inputs.append(out)
        # Backward, top layer first, each direction's steps in reverse order.
        d_out = grad_y[:n, b : b + 1].copy()
        for layer in reversed(range(num_layers)):
            d_in = np.zeros_like(inputs[layer])
            for d in range(D):
                k = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh, b_ih, b_hh, w_hr = _cell_params(params, layer, d, H, gates)
                dh = gh_n[k, b : b + 1].copy()
                dc = gc_n[k, b : b + 1].copy() if lstm else None
                steps = list(range(n)) if d else list(range(n - 1, -1, -1))
                for t in steps:
                    h, c = caches[k, t]
                    xt = inputs[layer][t]
                    dh = dh + d_out[t, :, d * P : (d + 1) * P]
                    if lstm:
                        dx, dh, dc, g = lstm_cell_backward(
                            xt, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, dh, dc
                        )
                    elif mode == "GRU":
                        dx, dh, g = gru_cell_backward(xt, h, w_ih, w_hh, b_ih, b_hh, dh)
                    else:
                        dx, dh, g = rnn_cell_backward(
                            xt, h, w_ih, w_hh, b_ih, b_hh, dh, nonlinearity
                        )
                    d_in[t] += dx
                    for short, name in (
                        ("w_ih", "weight_ih"),
                        ("w_hh", "weight_hh"),
                        ("b_ih", "bias_ih"),
                        ("b_hh", "bias_hh"),
                        ("w_hr", "weight_hr"),
                    ):
                        if name + sfx in grads:
                            grads[name + sfx] += g[short]
                dh0[k, b] = dh[0]
                if lstm:
                    dc0[k, b] = dc[0]
            if layer > 0 and layer - 1 < len(masks):
                d_in = d_in * masks[layer - 1][:n, b : b + 1]
            d_out = d_in
        grad_x[:n, b : b + 1] = d_out
    return grad_x, ((dh0, dc0) if lstm else dh0), grads
