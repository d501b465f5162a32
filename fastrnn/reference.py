"""Plain-NumPy reference: the specification the fast kernels are tested against.

Everything here is written the most obvious way, one time step and one
sequence at a time, with the gate equations exactly as the torch.nn
documentation states them. It is slow on purpose and has no Numba in it.

Parameters are passed as a ``state_dict`` with torch's names
(``weight_ih_l0``, ``bias_hh_l1_reverse``, ``weight_hr_l0``, ...).
"""

import numpy as np

__all__ = ["sigmoid", "lstm_cell", "gru_cell", "rnn_cell", "forward"]


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


def forward(mode, params, x, hx=None, *, hidden_size, num_layers=1,
            bidirectional=False, proj_size=0, nonlinearity="tanh", lengths=None):
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
                h = h0[k, b:b + 1]
                c = c0[k, b:b + 1] if mode == "LSTM" else None
                steps = range(n - 1, -1, -1) if d else range(n)
                for t in steps:
                    xt = layer_input[t, b:b + 1]
                    if mode == "LSTM":
                        h, c = lstm_cell(xt, h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
                    elif mode == "GRU":
                        h = gru_cell(xt, h, w_ih, w_hh, b_ih, b_hh)
                    else:
                        h = rnn_cell(xt, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
                    out[t, b, d * P:(d + 1) * P] = h[0]
                h_n[k, b] = h[0]
                if mode == "LSTM":
                    c_n[k, b] = c[0]
        layer_input = out
    return layer_input, ((h_n, c_n) if mode == "LSTM" else h_n)
