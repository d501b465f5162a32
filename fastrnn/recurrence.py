"""The time loops shared by every cell type: forward sequence, streaming step, backward.

The cell-specific math lives next to its backward in ``lstm.py``, ``gru.py`` and
``rnn.py`` (``cell_step`` / ``backward_step``, one shared argument list). The loops
here are written once and specialised per cell type at compile time:
``LOOPS[cell]`` holds the loops of one cell module, compiled (lazily, and
cached) with only that cell's math in them, so the first call of an LSTM compiles
no GRU or RNN code.
"""

import types
from typing import NamedTuple

from . import gru, lstm, rnn
from ._jit import VECTOR_BYTES, kernel
from .linalg import (
    array_at,
    column_sums,
    matmul2_nt,
    matmul_nn_acc,
    matmul_tn,
)
from .team import barrier
from .tile_gemm import FULL, padded, rows_times_t, tiles_gemm, times, times_packed
from .tiles import backward_product, recurrent_product

__all__ = ["LOOPS", "Loops", "RecurrentWeights", "Scratch", "GateGradients"]

# Argument lists. The sequence loops, called once per layer and direction, take named
# structures (RecurrentWeights, Scratch, GateGradients). The per-step entry points
# (``step_layer`` from ``step``, ``cell_step`` from the ``*Cell`` paths) keep flat
# positional arrays: Numba's dispatcher types a tuple argument in about 2 us more than
# the same arrays passed flat (measured on this project's VM), which is a large part of
# a batch-1 step at H=64.
#
# An absent array (no projection, no tape, float weights without int8 scales) is passed
# as None, not as an empty placeholder: Numba removes an ``if arg is not None`` branch
# before typing when the argument is None, so each call compiles only the code it runs
# (a first LSTM forward compiles no projection, tape or int8 code: seconds of cold start).
#
# The loops below are templates: ``cell_step`` and ``backward_step`` are the names that
# ``_specialise`` binds to one cell module's functions (in the copies' own globals), and
# the constants to that module's: its gate count, tape width, whether its W_ih and W_hh
# pre-activation gradients differ, whether it has a cell state.
cell_step = backward_step = None
GATES = TAPE_GATES = SEPARATE_DGH = CELL_STATE = None

#: Rows from which a ``*Cell`` step's products (``_cell_forward_at``,
#: ``_cell_backward_at``) run on register-blocked panels (``fastrnn.tile_gemm``) rather
#: than row by row, and the width of those panels (a float32 panel's columns, 16 with
#: AVX2 or 32 with AVX-512: a float64 panel is read as two). Panels of the step's few
#: rows are packed per call, the weights read in place: nothing is kept between calls.
CELL_PANEL_ROWS = 16
CELL_PANEL_WIDTH = 2 * VECTOR_BYTES // 4


@kernel
def cell_panel_scratch(B, I, H, G):
    """Elements of scratch a ``*Cell`` step of ``B`` rows needs for its products on
    panels (forward or backward), beyond the rest of its scratch; 0 below
    :data:`CELL_PANEL_ROWS` rows."""
    if B < CELL_PANEL_ROWS:
        return 0
    W, K = CELL_PANEL_WIDTH, max(I, H)
    return max(padded(B, W) * K + G * B, B * H + padded(K, W) * G, padded(K, W) * B)


class RecurrentWeights(NamedTuple):
    """A layer-direction's weights as the sequence loop reads them."""

    w_t: object  # W_hh transposed, (H_out, G·H): float, int8 in a quantized model, or
    # packed in tiles for batch 1 (``fastrnn.tiles``)
    scales: object  # the int8 rows' scales (None for float weights)
    b_ih: object  # (G·H,)
    b_hh: object  # (G·H,)
    w_hr: object  # the projection (H_out, H), or None without one


class Scratch(NamedTuple):
    """Per-step workspace of the sequence loop, allocated by the caller."""

    gh: object  # (B, G·H): h W_hh^T, then the activated gates
    m: object  # (B, H): the cell output before projection
    hp: object  # (B, max(H_out, H)): the new state before it is committed


class GateGradients(NamedTuple):
    """What the backward loop fills: pre-activation gradients of ``W_ih`` and ``W_hh``
    (T, B, G·H; one array unless the cell type tells them apart), and with projection
    ``dh`` (T, B, H_out) and ``o * tanh(c)`` (T, B, H) for ``W_hr``'s gradient."""

    dgx: object
    dgh: object
    dhp: object
    mt: object


class Loops(NamedTuple):
    """The compiled time loops of one cell type (see ``_specialise``)."""

    sequence: object
    team_sequence: object
    step_layer: object
    backward_sequence: object
    cell_forward_at: object
    cell_backward_at: object


def _sequence(
    gx, weights, h, c, y, lengths, reverse, activation, scratch, gates, h_prev, c_prev, x_proj
):
    """Run the recurrence over ``gx`` (T, B, G·H), writing ``y`` (T, B, P).

    With ``x_proj`` = ``(X, p)`` (the input (T, B, I) and ``W_ih^T`` packed in panels)
    the input projection is made step by step instead, into ``gx`` (1, B, G·H): a
    batch's projection one step at a time runs at the panel product's rate (83-87
    GFLOP/s here from 32 rows, against 70-80 for BLAS over all steps at once) and stays
    in cache for the cell step instead of a round trip through memory.

    ``h``/``c`` hold the initial state on entry and the final state on exit.
    ``reverse`` walks time backwards; each row then starts at its own last
    valid step because rows are frozen while ``t >= lengths[n]``.
    ``weights`` is a :class:`RecurrentWeights`, ``scratch`` a :class:`Scratch`.
    For training the tape's arrays record the activated ``gates`` (T, B, tape_gates·H)
    and the state entering each step, ``h_prev`` (T, B, P) and, for LSTM, ``c_prev``
    (T, B, H); for inference they are None, and that code is not compiled.
    """
    w_hh_t, s_hh, b_ih, b_hh, w_hr = weights
    gh, m, hp = scratch
    T, B, P = y.shape
    H = c.shape[1]
    for s in range(T):
        t = T - 1 - s if reverse else s
        if h_prev is not None:
            for n in range(B):
                for j in range(P):
                    h_prev[t, n, j] = h[n, j]
        if c_prev is not None:
            for n in range(B):
                for j in range(H):
                    c_prev[t, n, j] = c[n, j]
        recurrent_product(h, w_hh_t, s_hh, gh, s)
        at = t
        if x_proj is not None:
            tiles_gemm(x_proj[0][t], x_proj[1], gx[0], False, False)
            at = 0
        cell_step(
            gx[at],
            gh,
            b_ih,
            b_hh,
            w_hr,
            h,
            c,
            y[t],
            t,
            lengths,
            activation,
            m,
            hp,
            gates,
        )


def _team_sequence(
    gx, weights, hbuf, h, c, y, start, reverse, activation, scratch, ones, bar, members
):
    """One member of a team (:mod:`fastrnn.team`): a recurrence of B rows for hidden
    units ``start : start + nu``, in step with the other members.

    ``gx`` (T, B, G·nu) holds the member's gate columns of ``x W_ih^T``; ``weights`` (a
    :class:`RecurrentWeights`, no projection) its packed slice of ``W_hh^T``, (H, G·nu),
    and of the biases; ``hbuf`` (2, B, H) is the whole state, read every step and
    written for the member's units into the other half; ``h``/``c`` (B, nu) are its
    units' state (in place); ``y`` (T, B, H) the team's output. Every step of every row
    runs (full lengths). ``bar`` is the barrier of the team's ``members``.
    """
    w_t, s_hh, b_ih, b_hh, w_hr = weights
    gh, m, hp = scratch
    T = gx.shape[0]
    nu = h.shape[1]
    for s in range(T):
        t = T - 1 - s if reverse else s
        recurrent_product(hbuf[s % 2], w_t, s_hh, gh, s)
        cell_step(gx[t], gh, b_ih, b_hh, w_hr, h, c, h, 0, ones, activation, m, hp, None)
        nxt = hbuf[(s + 1) % 2]
        for n in range(h.shape[0]):
            for j in range(nu):
                nxt[n, start + j] = h[n, j]
                y[t, n, start + j] = h[n, j]
        if not barrier(bar, members):
            return


def _step_layer(
    x, w_ih_t, s_ih, w_hh_t, s_hh, b_ih, b_hh, w_hr, h_in, c_in, h, c, activation, gx, gh, m,
    hp, ones,
):  # fmt: skip
    """Streaming step of one layer, every row running: the input and recurrent products
    from the transposed weights ``w_*_t`` (I, G·H) and (H_out, G·H) (float with scales
    None, int8 with their row scales ``s_*``, or float seen as tiles for one row: see
    ``fastrnn.tiles.tile_view``), then the fused cell step. The state is
    read from ``h_in``/``c_in`` and written to ``h``/``c`` (the same arrays to step in
    place): a stream's next buffer is filled without a copy in Python first."""
    for n in range(h.shape[0]):  # (GRU's update reads the old h from ``h``)
        for j in range(h.shape[1]):
            h[n, j] = h_in[n, j]
        for j in range(c.shape[1]):
            c[n, j] = c_in[n, j]
    recurrent_product(x, w_ih_t, s_ih, gx, 0)
    recurrent_product(h, w_hh_t, s_hh, gh, 0)
    cell_step(gx, gh, b_ih, b_hh, w_hr, h, c, h, 0, ones, activation, m, hp, None)


def _cell_forward_at(
    like, B, I, H, x, h0, c0, w_ih, w_hh, b_ih, b_hh, h1, c1, gates, scratch, activation, ones,
    gx_at, gh_at,
):  # fmt: skip
    """One training step of a cell over memory given by address: the per-call path of a
    ``*Cell`` stepped in a Python loop, where making NumPy views of the caller's tensors
    would cost more than the step (the torch bridge).

    Every argument after ``B, I, H`` but ``activation`` is the address (an int) of
    C-contiguous memory of the dtype of the scalar ``like``: ``x`` (B, I), ``h0`` and
    ``h1`` (B, H), for LSTM ``c0`` and ``c1`` (B, H) (else ignored), ``w_ih`` (G·H, I)
    and ``w_hh`` (G·H, H) in torch's layout, ``b_ih`` and ``b_hh`` (G·H,) or 0 without
    bias, ``gates`` (B, tape_gates·H) receiving what :func:`_cell_backward_at` needs, and
    ``scratch`` of ``2·B·H + G·H`` elements, plus ``2·B·G·H`` unless the products are
    given; ``ones`` (B,) int64 ones (every row runs: the lengths the cell step reads).
    ``gx_at`` and ``gh_at`` are 0, or the products ``x W_ih^T`` and ``h0 W_hh^T`` (B,
    G·H) computed by the caller (a BLAS, for larger batches; ``gh_at`` is overwritten):
    then ``x``, ``w_ih`` and ``w_hh`` are not read.
    """
    G = GATES * H
    Hc = H if CELL_STATE else 0
    h_prev = array_at(h0, (B, H), like)
    c_prev = array_at(c0, (B, Hc), like)
    h = array_at(h1, (B, H), like)
    c = array_at(c1, (B, Hc), like)
    given = gx_at != 0
    panels = 0 if given else cell_panel_scratch(B, I, H, G)
    work = array_at(scratch, (2 * B * H + G + (0 if given else 2 * B * G) + panels,), like)
    m = work[: B * H].reshape((B, H))
    hp = work[B * H : 2 * B * H].reshape((B, H))
    zero = work[2 * B * H : 2 * B * H + G]
    zero[:] = 0
    for n in range(B):
        for j in range(H):
            h[n, j] = h_prev[n, j]
        for j in range(Hc):
            c[n, j] = c_prev[n, j]
    if given:
        gx = array_at(gx_at, (B, G), like)
        gh = array_at(gh_at, (B, G), like)
    else:
        o = 2 * B * H + G
        gx = work[o : o + B * G].reshape((B, G))
        gh = work[o + B * G : o + 2 * B * G].reshape((B, G))
        xa = array_at(x, (B, I), like)
        wi, wh = array_at(w_ih, (G, I), like), array_at(w_hh, (G, H), like)
        if panels:
            rest = work[o + 2 * B * G :]
            rows_times_t(xa, wi, gx, rest, CELL_PANEL_WIDTH)
            rows_times_t(h_prev, wh, gh, rest, CELL_PANEL_WIDTH)
        else:
            matmul2_nt(xa, wi, gx, h_prev, wh, gh)
    bi = zero if b_ih == 0 else array_at(b_ih, (G,), like)
    bh = zero if b_hh == 0 else array_at(b_hh, (G,), like)
    tape = array_at(gates, (1, B, TAPE_GATES * H), like)
    cell_step(gx, gh, bi, bh, None, h, c, h, 0, ones, activation, m, hp, tape)


def _cell_backward_at(
    like, B, I, H, gates, x, h0, c0, w_ih, w_hh, dh1, dc1, dx, dh0, dc0, dw_ih, dw_hh,
    db_ih, db_hh, scratch, activation, ones, dgx_at, dgh_at,
):  # fmt: skip
    """The gradients of one :func:`_cell_forward_at` step, over memory given by address.

    ``gates``, ``x``, ``h0``, ``c0``, ``w_ih``, ``w_hh`` are the forward's (same
    shapes); ``dh1`` and ``dc1`` (B, H) the incoming gradients, 0 for zero. The outputs
    are written, not accumulated: ``dx`` (B, I), ``dh0``, ``dc0`` (B, H), ``dw_ih``
    (G·H, I), ``dw_hh`` (G·H, H), ``db_ih``, ``db_hh`` (G·H,); 0 for one not wanted.
    ``scratch`` holds ``4·B·H`` elements, plus ``2·B·G·H`` unless ``dgx_at`` is given;
    ``ones`` is the forward's. ``dgx_at`` and ``dgh_at`` are 0, or where the gate
    gradients (B, G·H) go for the caller's own products (a BLAS, for larger batches;
    the same address for a cell type with one gate gradient): the caller then passes
    ``dx``, ``dw_ih``, ``dw_hh`` as 0, and ``w_hh`` as 0 to get in ``dh0`` the part of
    ``h0``'s gradient that does not go through ``W_hh`` (it adds ``dgh W_hh``).
    """
    G = GATES * H
    Hc = H if CELL_STATE else 0
    given = dgx_at != 0
    own = 0 if given else 2 * B * G  # (room for the gate gradients)
    panels = cell_panel_scratch(B, I, H, G)
    work = array_at(scratch, (4 * B * H + own + panels,), like)
    dm = work[: B * H].reshape((B, H))
    zeros = work[B * H : 2 * B * H].reshape((B, H))
    dh = work[2 * B * H : 3 * B * H].reshape((B, H))
    dc = work[3 * B * H : 3 * B * H + B * Hc].reshape((B, Hc))
    if given:
        dgx = array_at(dgx_at, (B, G), like)
        dgh = array_at(dgh_at, (B, G), like)
    else:
        o = 4 * B * H
        dgx = work[o : o + B * G].reshape((B, G))
        dgh = work[o + B * G : o + 2 * B * G].reshape((B, G)) if SEPARATE_DGH else dgx
    if dh0 != 0:
        dh = array_at(dh0, (B, H), like)
    if dc0 != 0:
        dc = array_at(dc0, (B, Hc), like)
    zeros[:] = 0
    dh[:] = 0
    dc[:] = 0
    if dh1 != 0:
        dh_in = array_at(dh1, (B, H), like)
        for n in range(B):
            for j in range(H):
                dh[n, j] = dh_in[n, j]
    if dc1 != 0:
        dc_in = array_at(dc1, (B, Hc), like)
        for n in range(B):
            for j in range(Hc):
                dc[n, j] = dc_in[n, j]
    h_prev = array_at(h0, (B, H), like)
    tape = array_at(gates, (B, TAPE_GATES * H), like)
    c_prev = array_at(c0, (B, Hc), like)
    backward_step(
        0, ones, tape, h_prev, c_prev, None, zeros, dh, dc, dgx, dgh, None, None, dm,
        activation,
    )  # fmt: skip
    if panels:  # (the weights read in place, the rows' operands packed in ``rest``)
        _cell_backward_panels(
            B, I, H, like, x, w_ih, w_hh, dgx, dgh, h_prev, dh, dx, dw_ih, dw_hh,
            work[4 * B * H + own :],
        )  # fmt: skip
    else:
        if w_hh != 0:
            matmul_nn_acc(dgh, array_at(w_hh, (G, H), like), dh)
        if dx != 0:
            dxa = array_at(dx, (B, I), like)
            dxa[:] = 0
            matmul_nn_acc(dgx, array_at(w_ih, (G, I), like), dxa)
        if dw_ih != 0:
            matmul_tn(dgx, array_at(x, (B, I), like), array_at(dw_ih, (G, I), like))
        if dw_hh != 0:
            matmul_tn(dgh, h_prev, array_at(dw_hh, (G, H), like))
    if db_ih != 0:
        column_sums(dgx, array_at(db_ih, (G,), like))
    if db_hh != 0:
        column_sums(dgh, array_at(db_hh, (G,), like))


@kernel
def _cell_backward_panels(B, I, H, like, x, w_ih, w_hh, dgx, dgh, h_prev, dh, dx, dw_ih, dw_hh,
                          rest):  # fmt: skip
    """The products of :func:`_cell_backward_at` on panels (``fastrnn.tile_gemm``):
    ``dh += dgh W_hh``, ``dx = dgx W_ih``, ``dW_ih = dgxᵀ x``, ``dW_hh = dghᵀ h_prev``
    (addresses 0: not wanted). ``rest`` holds ``cell_panel_scratch`` elements."""
    G = dgx.shape[1]
    W = CELL_PANEL_WIDTH
    if w_hh != 0:
        part = rest[: B * H].reshape((B, H))
        times(dgh, array_at(w_hh, (G, H), like), part, FULL, False, rest[B * H :], W)
        for n in range(B):
            for j in range(H):
                dh[n, j] += part[n, j]
    if dx != 0:
        times(dgx, array_at(w_ih, (G, I), like), array_at(dx, (B, I), like), FULL, False, rest, W)
    # the rows' operands packed even where they could be read in place (a small copy)
    if dw_ih != 0:
        xa = array_at(x, (B, I), like)
        times_packed(dgx, xa, array_at(dw_ih, (G, I), like), FULL, True, rest, W)
    if dw_hh != 0:
        times_packed(dgh, h_prev, array_at(dw_hh, (G, H), like), FULL, True, rest, W)


def _backward_sequence(record, w_hh, w_hr, lengths, reverse, activation, dy, dh, dc, grads, dm):
    """Walk the recurrence backwards: fills ``dgx`` and ``dgh`` (T, B, G·H) (the same
    array unless the cell type tells them apart) and, with projection, ``dhp``
    (T, B, P) and ``mt`` (T, B, H); ``dh``/``dc`` enter as the final-state gradients
    and leave as the initial-state gradients. ``record`` is the forward's ``(gates,
    h_prev, c_prev)``, ``grads`` a :class:`GateGradients`. Without projection
    ``w_hr``, ``dhp`` and ``mt`` are None; a (1, 0, 0) ``c_prev`` stands for the cell
    state that only LSTM has."""
    gates, h_prev, c_prev = record
    dgx, dgh, dhp, mt = grads
    T = gates.shape[0]
    cell_tape = c_prev.shape[0] == T and c_prev.shape[1] > 0
    for s in range(T):
        t = s if reverse else T - 1 - s
        backward_step(
            t,
            lengths,
            gates[t],
            h_prev[t],
            c_prev[t if cell_tape else 0],
            w_hr,
            dy[t],
            dh,
            dc,
            dgx[t],
            dgh[t],
            dhp,
            mt,
            dm,
            activation,
        )
        backward_product(dgh[t], w_hh, dh, s)


def _specialise(cell):
    """The loops with ``cell``'s ``cell_step``/``backward_step`` bound as globals.

    Numba compiles a call to a global jitted function as a direct call, so each cell
    type gets loops with only its own math in them (one level of calls, nothing to
    branch on). Each copy has its own qualified name, hence its own cache files.
    """
    name = cell.__name__.rsplit(".", 1)[1]
    bound = dict(
        globals(),
        cell_step=cell.cell_step,
        backward_step=cell.backward_step,
        GATES=cell.GATES,
        TAPE_GATES=cell.TAPE_GATES,
        SEPARATE_DGH=cell.SEPARATE_DGH,
        CELL_STATE=cell is lstm,
    )
    loops = []
    templates = (
        _sequence,
        _team_sequence,
        _step_layer,
        _backward_sequence,
        _cell_forward_at,
        _cell_backward_at,
    )
    for template in templates:
        fn = types.FunctionType(template.__code__, bound, f"{name}{template.__name__}")
        fn.__qualname__ = fn.__name__
        fn.__doc__ = template.__doc__
        loops.append(kernel(fn))
    return Loops(*loops)


class _LoopsByCell(dict):
    """Cell module -> its :class:`Loops`, made on first use (a process that runs only
    LSTMs creates no GRU or RNN dispatchers at import)."""

    def __missing__(self, cell):
        if cell not in (lstm, gru, rnn):
            raise KeyError(cell)
        return self.setdefault(cell, _specialise(cell))


#: Cell module (``lstm``, ``gru``, ``rnn``) -> its compiled :class:`Loops`.
LOOPS = _LoopsByCell()
