"""Elman RNN kernels (tanh or ReLU): the fused cell step and the recurrence.

::

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh (mode 0) or relu (mode 1)

The argument list is shared with ``lstm.py`` (``c``, ``w_hr``, ``hp`` unused).
"""

from ._jit import kernel
from .activations import relu, tanh
from .linalg import commit_rows, matmul2_nt, matmul_nn_acc, matmul_nt

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



@kernel
def step_layer(x, w_ih, w_hh, b_ih, b_hh, w_hr, h, c, mode, gx, gh, m, hp, ones, no_gates):
    """Streaming step of one layer, every row running: both input and recurrent
    products in one pass over the weights, then the fused cell step (``h``/``c`` in place)."""
    matmul2_nt(x, w_ih, gx, h, w_hh, gh)
    cell_step(gx, gh, b_ih, b_hh, w_hr, h, c, h, 0, ones, mode, m, hp, no_gates)

# ----------------------------------------------------------------------------- backward
#
#     da = dh * (1 - h'^2)  (tanh)   or   dh * [h' > 0]  (relu);   dh_prev = da W_hh

SEPARATE_DGH = False


@kernel
def backward_step(t, lengths, gates_t, h_prev_t, c_prev_t, w_hr, dy_t, dh, dc,
                  dgx_t, dgh_t, dhp_t, m_t, dm, mode):
    """Pre-activation gradient of step ``t``; see ``lstm.backward_step``."""
    B, H = dh.shape
    for n in range(B):
        g = dgx_t[n]
        if t >= lengths[n]:
            g[:] = 0
            continue
        dhn = dh[n]
        a = gates_t[n]
        if mode == 0:
            for j in range(H):
                g[j] = (dhn[j] + dy_t[n, j]) * (1 - a[j] * a[j])
        else:
            for j in range(H):
                g[j] = (dhn[j] + dy_t[n, j]) if a[j] > 0 else 0 * a[j]
        dhn[:] = 0


@kernel
def backward_sequence(gates, h_prev, c_prev, w_hh, w_hr, lengths, reverse, mode, dy, dh, dc,
                      dgx, dgh, dhp, mt, dm):
    """Walk the RNN recurrence backwards; see ``lstm.backward_sequence``."""
    T = gates.shape[0]
    for s in range(T):
        t = s if reverse else T - 1 - s
        backward_step(t, lengths, gates[t], h_prev[t], c_prev[0], w_hr, dy[t], dh, dc,
                      dgx[t], dgh[t], dhp[0], mt[0], dm, mode)
        matmul_nn_acc(dgx[t], w_hh, dh)
