"""Elman RNN kernels (tanh or ReLU): the fused cell step and the recurrence.

::

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh (mode 0) or relu (mode 1)

The argument list is shared with ``lstm.py`` (``c``, ``w_hr``, ``hp`` unused).
"""

from ._jit import kernel
from .activations import relu, tanh
from .linalg import commit_rows, matmul_nt

GATES = 1
TAPE_GATES = 1  # h' itself: both derivatives are functions of the output
MODES = {"tanh": 0, "relu": 1}


@kernel
def cell_step(gx_t, gh, b_ih, b_hh, w_hr, h, c, y_t, t, lengths, mode, m, hp, gates_t):
    """One RNN time step for every row still running at step ``t``."""
    B, H = gx_t.shape
    store = gates_t.shape[0] > 0
    for n in range(B):
        if t >= lengths[n]:
            continue
        a, mn = gh[n], m[n]
        x = gx_t[n]
        for j in range(H):
            a[j] += x[j] + b_ih[j] + b_hh[j]
        if mode == 0:
            for j in range(H):
                mn[j] = tanh(a[j])
        else:
            for j in range(H):
                mn[j] = relu(a[j])
        if store:
            gates_t[n, :] = mn
    commit_rows(h, m, y_t, t, lengths)


@kernel
def sequence(gx, w_hh, b_ih, b_hh, w_hr, h, c, y, lengths, reverse, mode,
             gh, m, hp, tape_gates, tape_h, tape_c):
    """Run the RNN recurrence over ``gx`` (T, B, H); see ``lstm.sequence``."""
    T = gx.shape[0]
    train = tape_h.shape[0] > 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        if train:
            tape_h[t, :, :] = h
        matmul_nt(h, w_hh, gh)
        cell_step(gx[t], gh, b_ih, b_hh, w_hr, h, c, y[t], t, lengths, mode, m, hp,
                  tape_gates[t if train else 0])
