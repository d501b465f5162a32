"""GRU kernels: the fused cell step and its backward (the time loops: ``recurrence.py``).

Gate layout is torch's: the 3H pre-activation rows are ``r, z, n``::

    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

The argument lists are shared with ``lstm.py`` (``c``, ``w_hr``, ``hp`` unused); the
time loops are in ``recurrence.py``.
"""

from ._jit import kernel
from .activations import sigmoid, tanh
from .linalg import commit_rows

GATES = 3
TAPE_GATES = 4  # r, z, n and the recurrent part of n, W_hn h + b_hn


@kernel
def cell_step(gx_t, gh, b_ih, b_hh, w_hr, h, c, y_t, t, lengths, activation, m, hp, tape):
    """One GRU time step for every row still running at step ``t``.

    ``gx_t`` (B, 3H) holds ``x W_ih^T``, ``gh`` (B, 3H) holds ``h W_hh^T``; the new
    state goes to ``m`` and through :func:`commit_rows` into ``h`` and ``y_t``.
    ``tape`` (T, B, 4H), if not None, receives ``r, z, n, W_hn h + b_hn`` at ``tape[t]``.
    Short passes over few arrays keep every loop vectorisable (see ``lstm.py``).
    """
    B, H3 = gx_t.shape
    H = H3 // 3
    for n in range(B):
        if t >= lengths[n]:
            continue
        a = gh[n]
        x = gx_t[n]
        for k in range(H3):
            a[k] += b_hh[k]
        for k in range(2 * H):
            a[k] = sigmoid(a[k] + x[k] + b_ih[k])
        nn = hp[n]
        for j in range(H):
            nn[j] = tanh(x[2 * H + j] + b_ih[2 * H + j] + a[j] * a[2 * H + j])
        hn, mn = h[n], m[n]
        for j in range(H):
            mn[j] = nn[j] + a[H + j] * (hn[j] - nn[j])
        if tape is not None:
            g = tape[t, n]  # r, z, n, W_hn h + b_hn
            for k in range(2 * H):
                g[k] = a[k]
            for j in range(H):
                g[2 * H + j] = nn[j]
                g[H3 + j] = a[2 * H + j]
    commit_rows(h, m, y_t, t, lengths)


# ----------------------------------------------------------------------------- backward
#
# With ``dh`` the gradient reaching h' and the taped r, z, n, hn = W_hn h + b_hn:
#
#     dn = dh (1 - z);   dz = dh (h - n);   da_n = dn (1 - n^2)
#     dr = da_n * hn;    da_r = dr r (1 - r);   da_z = dz z (1 - z)
#     input side  (W_ih, b_ih): [da_r, da_z, da_n]
#     hidden side (W_hh, b_hh): [da_r, da_z, da_n * r]
#     dh_prev = dh * z + (hidden side) W_hh

SEPARATE_DGH = True  # the n gate's pre-activation gradient differs for W_ih and W_hh


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
    """Input- and hidden-side gate gradients of step ``t``; leaves ``dh * z`` in ``dh``
    for running rows (the caller adds ``dgh_t W_hh``). See ``lstm.backward_step``."""
    B, H = dh.shape
    for n in range(B):
        gx = dgx_t[n]
        gh = dgh_t[n]
        if t >= lengths[n]:
            gx[:] = 0
            gh[:] = 0
            continue
        dhn = dh[n]
        for j in range(H):
            dhn[j] += dy_t[n, j]
        a = gates_t[n]
        hp = h_prev_t[n]
        for j in range(H):
            r, z, nn, hn = a[j], a[H + j], a[2 * H + j], a[3 * H + j]
            d = dhn[j]
            dan = d * (1 - z) * (1 - nn * nn)
            dar = dan * hn * r * (1 - r)
            daz = d * (hp[j] - nn) * z * (1 - z)
            gx[j] = dar
            gx[H + j] = daz
            gx[2 * H + j] = dan
            gh[j] = dar
            gh[H + j] = daz
            gh[2 * H + j] = dan * r
            dhn[j] = d * z
