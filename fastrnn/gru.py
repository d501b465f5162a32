"""GRU kernels: the fused cell step and the sequence recurrence.

Gate layout is torch's: the 3H pre-activation rows are ``r, z, n``::

    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

The argument list is shared with ``lstm.py`` (``c``, ``w_hr``, ``hp`` unused).
"""

from ._jit import kernel
from .activations import sigmoid, tanh
from .linalg import commit_rows, matmul_nt

GATES = 3
TAPE_GATES = 4  # r, z, n and the recurrent part of n, W_hn h + b_hn


@kernel
def cell_step(gx_t, gh, b_ih, b_hh, w_hr, h, c, y_t, t, lengths, mode, m, hp, gates_t):
    """One GRU time step for every row still running at step ``t``.

    ``gx_t`` (B, 3H) holds ``x W_ih^T``, ``gh`` (B, 3H) holds ``h W_hh^T``; the new
    state goes to ``m`` and through :func:`commit_rows` into ``h`` and ``y_t``.
    A non-empty ``gates_t`` (B, 4H) receives ``r, z, n, W_hn h + b_hn``.
    """
    B, H3 = gx_t.shape
    H = H3 // 3
    store = gates_t.shape[0] > 0
    for n in range(B):
        if t >= lengths[n]:
            continue
        for j in range(H):
            r = sigmoid(gx_t[n, j] + b_ih[j] + gh[n, j] + b_hh[j])
            z = sigmoid(gx_t[n, H + j] + b_ih[H + j] + gh[n, H + j] + b_hh[H + j])
            hn = gh[n, 2 * H + j] + b_hh[2 * H + j]
            nn = tanh(gx_t[n, 2 * H + j] + b_ih[2 * H + j] + r * hn)
            m[n, j] = nn + z * (h[n, j] - nn)
            gh[n, j] = r
            gh[n, H + j] = z
            gh[n, 2 * H + j] = nn
            hp[n, j] = hn
        if store:
            for j in range(H3):
                gates_t[n, j] = gh[n, j]
            for j in range(H):
                gates_t[n, H3 + j] = hp[n, j]
    commit_rows(h, m, y_t, t, lengths)


@kernel
def sequence(gx, w_hh, b_ih, b_hh, w_hr, h, c, y, lengths, reverse, mode,
             gh, m, hp, tape_gates, tape_h, tape_c):
    """Run the GRU recurrence over ``gx`` (T, B, 3H); see ``lstm.sequence``."""
    T = gx.shape[0]
    train = tape_h.shape[0] > 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        if train:
            tape_h[t, :, :] = h
        matmul_nt(h, w_hh, gh)
        cell_step(gx[t], gh, b_ih, b_hh, w_hr, h, c, y[t], t, lengths, mode, m, hp,
                  tape_gates[t if train else 0])
