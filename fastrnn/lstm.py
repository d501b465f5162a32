"""LSTM kernels: the fused cell step and its backward (the time loops: ``recurrence.py``).

Gate layout is torch's: the 4H pre-activation rows are ``i, f, g, o``::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g = tanh   (W_ig x + b_ig + W_hg h + b_hg)
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    m  = o * tanh(c')
    h' = m              (or W_hr m with proj_size > 0)

``cell_step`` and ``backward_step`` share one argument list with ``rnn.py`` and
``gru.py`` (arguments a cell type does not use are ignored), so the time loops in
``recurrence.py`` drive all three.
"""

from ._jit import kernel
from .activations import sigmoid, tanh
from .linalg import commit_rows, matmul_nt

GATES = 4
TAPE_GATES = 4  # i, f, g, o after their nonlinearities


@kernel
def cell_step(gx_t, gh, b_ih, b_hh, w_hr, h, c, y_t, t, lengths, activation, m, hp, tape):
    """One LSTM time step for every row still running at step ``t``.

    ``gx_t`` (B, 4H) holds ``x W_ih^T`` and ``gh`` (B, 4H) holds ``h W_hh^T``;
    the biases are added here and ``gh`` is left holding the activated gates.
    ``c`` is updated in place, ``h`` and ``y_t`` are written through
    :func:`commit_rows`. ``tape`` (T, B, 4H), if not None, receives the activated
    gates at ``tape[t]`` for the backward pass; ``w_hr`` (P, H) is the projection,
    None without one. An absent array (None) is a different compiled
    specialisation with that code left out, so a call compiles only what it runs.

    Each row is done in short passes that read and write few arrays, so LLVM's
    runtime alias checks stay cheap and every pass vectorises.
    """
    B, H4 = gx_t.shape
    H = H4 // 4
    for n in range(B):
        if t >= lengths[n]:
            continue
        a = gh[n]
        x = gx_t[n]
        for k in range(H4):
            a[k] += x[k] + b_ih[k] + b_hh[k]
        for k in range(2 * H):
            a[k] = sigmoid(a[k])
        # Offsets inside the body, not in the range: LLVM left ``range(3 * H, H4)`` (and
        # ``range(3 * H, 4 * H)``) scalar, a fifth of the step's activations (asm checked).
        for j in range(H):
            a[2 * H + j] = tanh(a[2 * H + j])
        for j in range(H):
            a[3 * H + j] = sigmoid(a[3 * H + j])
        cn = c[n]
        for j in range(H):
            cn[j] = a[H + j] * cn[j] + a[j] * a[2 * H + j]
        mn = m[n]
        for j in range(H):
            mn[j] = a[3 * H + j] * tanh(cn[j])
        if tape is not None:
            gt = tape[t, n]
            for k in range(H4):
                gt[k] = a[k]
    if w_hr is not None:
        matmul_nt(m, w_hr, hp)
        commit_rows(h, hp, y_t, t, lengths)
    else:
        commit_rows(h, m, y_t, t, lengths)


# ----------------------------------------------------------------------------- backward
#
# With ``dh`` the gradient reaching h' (from the output and the next step),
# ``dm = W_hr^T dh`` (or ``dh`` without projection), and ``dc`` from the next step:
#
#     tc = tanh(c');  do = dm * tc;  dc += dm * o * (1 - tc^2)
#     da_i = dc * g * i (1 - i);   da_f = dc * c * f (1 - f)
#     da_g = dc * i * (1 - g^2);   da_o = do * o (1 - o)
#     dc_prev = dc * f;            dh_prev = da W_hh
#
# ``da`` (B, 4H) is the gradient of the pre-activations for both W_ih and W_hh.
# c' is recomputed from the taped gates and c (cheaper than taping it).

SEPARATE_DGH = False  # the pre-activation gradient is the same for W_ih and W_hh


@kernel
def backward_step(
    t,
    lengths,
    gates_t,
    h_prev_t,
    c_prev_t,
    w_hr,
    dy_t,
    dh,
    dc,
    dgx_t,
    dgh_t,
    dhp,
    mt,
    dm,
    activation,
):
    """Gate gradients of step ``t`` into ``dgx_t``; turns ``dh``/``dc`` into the
    gradients entering step ``t``, except the recurrent product ``dgx_t W_hh``
    that the caller adds to ``dh``. Rows past their length get zero gradients and
    pass ``dh``/``dc`` through unchanged.

    With projection (``w_hr`` not None), ``dhp[t]`` (of ``dhp`` (T, B, P)) receives
    ``dh`` and ``mt[t]`` (of ``mt`` (T, B, H)) the recomputed ``o * tanh(c')`` for the
    ``W_hr`` gradient; without, all three are None (and that code is not compiled).
    """
    B, P = dh.shape
    H = dm.shape[1]
    for n in range(B):
        g = dgx_t[n]
        if t >= lengths[n]:
            g[:] = 0
            if w_hr is not None:  # both factors of W_hr's gradient: 0 * garbage may be NaN
                dhp[t, n, :] = 0
                mt[t, n, :] = 0
            continue
        dhn = dh[n]
        for j in range(P):
            dhn[j] += dy_t[n, j]
        # ``tc`` (tanh of the recomputed c') lives in mt's row with projection (turned
        # into o * tc at the end), else in the free ``dm`` row.
        if w_hr is not None:
            dhpn = dhp[t, n]
            for j in range(P):
                dhpn[j] = dhn[j]
            dmn = dm[n]
            dmn[:] = 0
            for p in range(P):
                s = dhn[p]
                for j in range(H):
                    dmn[j] += s * w_hr[p, j]
            tc = mt[t, n]
        else:
            dmn = dhn
            tc = dm[n]
        a = gates_t[n]
        cp = c_prev_t[n]
        dcn = dc[n]
        # Short passes over few arrays (see cell_step) so each one vectorises.
        for j in range(H):
            tc[j] = tanh(a[H + j] * cp[j] + a[j] * a[2 * H + j])
        for j in range(H):
            dcn[j] += dmn[j] * a[3 * H + j] * (1 - tc[j] * tc[j])
        for j in range(H):
            g[j] = dcn[j] * a[2 * H + j] * a[j] * (1 - a[j])
            g[H + j] = dcn[j] * cp[j] * a[H + j] * (1 - a[H + j])
            g[2 * H + j] = dcn[j] * a[j] * (1 - a[2 * H + j] * a[2 * H + j])
            g[3 * H + j] = dmn[j] * tc[j] * a[3 * H + j] * (1 - a[3 * H + j])
        for j in range(H):
            dcn[j] *= a[H + j]
        if w_hr is not None:
            for j in range(H):
                tc[j] *= a[3 * H + j]
        dhn[:] = 0
