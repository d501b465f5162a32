"""Elman RNN kernels (tanh or ReLU): the fused cell step and its backward.

::

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh (activation 0) or relu (1)

The argument lists are shared with ``lstm.py`` (``c``, ``w_hr``, ``hp`` unused); the
time loops are in ``recurrence.py``.
"""

from ._jit import kernel
from .activations import relu, tanh
from .linalg import commit_rows

GATES = 1
TAPE_GATES = 1  # h' itself: both derivatives are functions of the output
ACTIVATIONS = {"tanh": 0, "relu": 1}


@kernel
def cell_step(gx_t, gh, b_ih, b_hh, w_hr, h, c, y_t, t, lengths, activation, m, hp, tape):
    """One RNN time step for every row still running at step ``t``; ``tape`` (T, B, H),
    if not None, receives h' at ``tape[t]``."""
    B, H = gx_t.shape
    for n in range(B):
        if t >= lengths[n]:
            continue
        a, mn = gh[n], m[n]
        x = gx_t[n]
        for j in range(H):
            a[j] += x[j] + b_ih[j] + b_hh[j]
        if activation == 0:
            for j in range(H):
                mn[j] = tanh(a[j])
        else:
            for j in range(H):
                mn[j] = relu(a[j])
        if tape is not None:
            gt = tape[t, n]
            for j in range(H):
                gt[j] = mn[j]
    commit_rows(h, m, y_t, t, lengths)


# ----------------------------------------------------------------------------- backward
#
#     da = dh * (1 - h'^2)  (tanh)   or   dh * [h' > 0]  (relu);   dh_prev = da W_hh

SEPARATE_DGH = False


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
    """Pre-activation gradient of step ``t``; see ``lstm.backward_step``."""
    B, H = dh.shape
    for n in range(B):
        g = dgx_t[n]
        if t >= lengths[n]:
            g[:] = 0
            continue
        dhn = dh[n]
        a = gates_t[n]
        if activation == 0:
            for j in range(H):
                g[j] = (dhn[j] + dy_t[n, j]) * (1 - a[j] * a[j])
        else:
            for j in range(H):
                g[j] = (dhn[j] + dy_t[n, j]) if a[j] > 0 else 0 * a[j]
        dhn[:] = 0
