"""The time loops shared by every cell type: forward sequence, streaming step, backward.

The cell-specific math lives next to its backward in ``lstm.py``, ``gru.py`` and
``rnn.py`` (``cell_step`` / ``backward_step``, one shared argument list); the loops
here dispatch on ``kind`` (``KIND[mode]``), so each loop is written once. All
three cells are compiled into each loop; the branch costs nothing next to a step.
"""

from . import gru, lstm, rnn
from ._jit import kernel
from .linalg import matmul2_nt, matmul_nn_acc, matmul_t

KIND = {lstm: 0, gru: 1, rnn: 2}  # cell module -> the ``kind`` argument of the loops


@kernel
def cell_step(kind, gx_t, gh, b_ih, b_hh, w_hr, h, c, y_t, t, lengths, mode, m, hp, gates_t):
    """The ``cell_step`` of cell type ``kind``."""
    if kind == 0:
        lstm.cell_step(gx_t, gh, b_ih, b_hh, w_hr, h, c, y_t, t, lengths, mode, m, hp, gates_t)
    elif kind == 1:
        gru.cell_step(gx_t, gh, b_ih, b_hh, w_hr, h, c, y_t, t, lengths, mode, m, hp, gates_t)
    else:
        rnn.cell_step(gx_t, gh, b_ih, b_hh, w_hr, h, c, y_t, t, lengths, mode, m, hp, gates_t)


@kernel
def sequence(kind, gx, w_hh_t, s_hh, b_ih, b_hh, w_hr, h, c, y, lengths, reverse, mode,
             gh, m, hp, tape_gates, tape_h, tape_c):
    """Run the recurrence over ``gx`` (T, B, G·H), writing ``y`` (T, B, P).

    ``h``/``c`` hold the initial state on entry and the final state on exit.
    ``reverse`` walks time backwards; each row then starts at its own last
    valid step because rows are frozen while ``t >= lengths[n]``.
    With a training tape (``tape_h.shape[0] == T``) the activated gates and the
    state entering each step are recorded (``tape_c`` is empty but for LSTM);
    for inference the tapes are empty (``tape_gates`` of shape (1, 0, 0)).
    ``w_hh_t`` is the recurrent weight transposed, (H_out, G·H): float, or int8 in a
    quantized model with its row scales ``s_hh`` (empty otherwise).
    """
    T = gx.shape[0]
    train = tape_h.shape[0] > 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        if train:
            tape_h[t, :, :] = h
            if tape_c.shape[0] > 0:
                tape_c[t, :, :] = c
        matmul_t(h, w_hh_t, s_hh, gh)
        cell_step(kind, gx[t], gh, b_ih, b_hh, w_hr, h, c, y[t], t, lengths, mode, m, hp,
                  tape_gates[t if train else 0])


@kernel
def step_layer(kind, x, w_ih, w_hh, b_ih, b_hh, w_hr, q_ih, s_ih, q_hh, s_hh, h, c, mode,
               gx, gh, m, hp, ones, no_gates):
    """Streaming step of one layer, every row running: the input and recurrent products
    in one pass over both weight matrices (or over their int8 copies ``q_*`` with row
    scales ``s_*`` in a quantized model), then the fused cell step (``h``/``c`` in place)."""
    if s_hh.shape[0] > 0:
        matmul_t(x, q_ih, s_ih, gx)
        matmul_t(h, q_hh, s_hh, gh)
    else:
        matmul2_nt(x, w_ih, gx, h, w_hh, gh)
    cell_step(kind, gx, gh, b_ih, b_hh, w_hr, h, c, h, 0, ones, mode, m, hp, no_gates)


@kernel
def backward_step(kind, t, lengths, gates_t, h_prev_t, c_prev_t, w_hr, dy_t, dh, dc,
                  dgx_t, dgh_t, dhp_t, m_t, dm, mode):
    """The ``backward_step`` of cell type ``kind``."""
    if kind == 0:
        lstm.backward_step(t, lengths, gates_t, h_prev_t, c_prev_t, w_hr, dy_t, dh, dc,
                           dgx_t, dgh_t, dhp_t, m_t, dm, mode)
    elif kind == 1:
        gru.backward_step(t, lengths, gates_t, h_prev_t, c_prev_t, w_hr, dy_t, dh, dc,
                          dgx_t, dgh_t, dhp_t, m_t, dm, mode)
    else:
        rnn.backward_step(t, lengths, gates_t, h_prev_t, c_prev_t, w_hr, dy_t, dh, dc,
                          dgx_t, dgh_t, dhp_t, m_t, dm, mode)


@kernel
def backward_sequence(kind, gates, h_prev, c_prev, w_hh, w_hr, lengths, reverse, mode, dy,
                      dh, dc, dgx, dgh, dhp, mt, dm):
    """Walk the recurrence backwards: fills ``dgx`` and ``dgh`` (T, B, G·H) (the same array
    unless the cell type tells them apart) and, with projection, ``dhp`` (T, B, P) and
    ``mt`` (T, B, H); ``dh``/``dc`` enter as the final-state gradients and leave as the
    initial-state gradients. Empty placeholders (1, 0, 0) stand for absent tapes."""
    T = gates.shape[0]
    proj = w_hr.shape[0] > 0
    cell_tape = c_prev.shape[0] == T and c_prev.shape[1] > 0
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp = t if proj else 0
        backward_step(kind, t, lengths, gates[t], h_prev[t], c_prev[t if cell_tape else 0],
                      w_hr, dy[t], dh, dc, dgx[t], dgh[t], dhp[tp], mt[tp], dm, mode)
        matmul_nn_acc(dgh[t], w_hh, dh)
