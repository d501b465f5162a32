"""The CPU backend: NumPy arrays, Numba kernels, the current GEMM (``fastrnn.linalg``).

A layer-direction's whole recurrence runs inside one Numba kernel (``recurrence.LOOPS``),
its per-step product over ``W_hh`` packed in tiles at batch 1 (``fastrnn.tiles``) or in
panels from two rows (``fastrnn.tile_gemm``), where packing pays; a quantized model's
batch of ``BLAS_MIN_BATCH`` rows or more calls BLAS per step from a Python loop.
"""

import threading

import numpy as np

from .. import pairs, recurrence, threads
from ..linalg import gemm, numpy_gemm, use_gemm
from ..tile_gemm import panel_width
from ..tiles import fixed_tiles, pack_tiles, tile_width
from . import reuse
from .projection import Projection, pairs_pay
from .tape import Steps
from .team_recurrence import (  # noqa: F401 (the team's thresholds, read here too)
    TEAM_MIN_SEQUENCE,
    TEAM_MIN_UNITS,
    TEAM_MIN_WORK,
    team_recurrence,
)

#: Batch size from which the per-step product runs on packed panels however short the
#: sequence (a quantized model's: BLAS per step), and from which the whole stack is
#: split in pieces of rows instead of each recurrence (``fastrnn.engine.pieces``).
BLAS_MIN_BATCH = 16
#: Fewest batch rows worth a thread of their own below ``BLAS_MIN_BATCH``.
MIN_THREAD_ROWS = 4
#: Fewest rows of a recurrence that projects its input step by step
#: (``_step_projection``).
BLAS_MIN_PIECE = 32
#: Fewest steps of a batch-1 recurrence for which its ``W_hh`` is packed in tiles: the
#: pack costs about three products (68 us for 1 MB here), each step saves a third.
TILES_MIN_STEPS = 12
#: Packing buffers kept per thread (the most recent shapes and roles: a two-layer
#: training step uses up to six).
TILES_KEPT = 8


def batch_pieces(B):
    """The row ranges a (·, B, ·) recurrence is split into, one per thread: below
    ``BLAS_MIN_BATCH`` rows (a larger batch is split a whole stack at a time, by
    ``fastrnn.engine.pieces``, and its recurrences are not split again).

    The recurrence's products give a row the same bits whatever the split (the kernel
    loop's row products), and the projection is made whole before the split: results
    are identical on any number of threads (docs/performance.md, "Threads").
    """
    if B >= BLAS_MIN_BATCH:
        return [(0, B)]
    return threads.split(B, MIN_THREAD_ROWS)


def _rows(a, b0, b1):
    """Rows ``b0:b1`` of the batch axis (axis 1) of ``a`` as a new contiguous array."""
    return np.ascontiguousarray(a[:, b0:b1])


def _placeholder(dtype):
    """A (1, 0, 0) array standing for an absent tape or workspace."""
    return np.empty((1, 0, 0), dtype)


class CPUBackend:
    """Arrays and per-layer kernels on the CPU (see :mod:`fastrnn.engine.driver`)."""

    name = "cpu"

    # ------------------------------------------------------------------ arrays
    @staticmethod
    def empty(shape, dtype):
        return reuse.empty(shape, dtype)  # (large ones in memory kept from call to call)

    @staticmethod
    def zeros(shape, dtype):
        return np.zeros(shape, dtype)

    @staticmethod
    def multiply(a, b):
        return a * b

    @staticmethod
    def input_projection(X, w_ih, shape, stored=None):
        """A recurrence's ``X W_ih^T`` seen as ``shape`` (T, B, G·H), computed when the
        recurrence needs it: a thread team computes each member's gate columns of it on
        the member's own core (:mod:`fastrnn.engine.team_recurrence`). ``stored``: a
        quantized model's ``(stored W_ih^T, scales)`` (bfloat16 ones may take
        :mod:`fastrnn.pairs`)."""
        return Projection(X, w_ih, shape, stored)

    @staticmethod
    def product_tn(a, b, out):
        """``out = a.T @ b``."""
        gemm(a.T, b, out=out)

    @staticmethod
    def product_nn(a, b, out, accumulate):
        """``out = a @ b``, or ``out += a @ b`` with ``accumulate``."""
        if accumulate:
            out += gemm(a, b)
        else:
            gemm(a, b, out=out)

    @staticmethod
    def column_sum(a, out):
        np.sum(a, axis=0, out=out)

    # ------------------------------------------------------------------ recurrences
    @staticmethod
    def each(jobs, batch):
        """Run independent ``jobs`` (a layer's directions): on threads of their own when
        the batch is too small to be split across them, else one after another (each
        then splits its batch)."""
        if len(jobs) > 1 and len(batch_pieces(batch)) == 1:
            pieces = threads.split(len(jobs), 1)
            if len(pieces) > 1:
                threads.run(lambda start, stop: [job() for job in jobs[start:stop]], pieces)
                return
        for job in jobs:
            job()

    @staticmethod
    def recurrence(spec, *, gx, w_hh, b_ih, b_hh, w_hr, h, c, y, lengths, reverse, steps, int8):
        """One layer-direction forward over ``gx`` (T, B, G·H) = ``x W_ih^T``.

        ``h`` (B, H_out) and ``c`` (B, H) hold the initial state and are left holding the
        final one; ``y`` (T, B, H_out) is written (a strided view is written through a
        contiguous buffer). ``steps`` is the tape's :class:`~fastrnn.engine.Steps` or None;
        ``int8`` is ``(transposed stored w_hh, row scales or None)`` of a quantized model
        (int8 or bfloat16 bits), or None.
        """
        pieces = batch_pieces(gx.shape[1])
        if len(pieces) == 1:
            out = y if y.flags.c_contiguous else np.empty(y.shape, y.dtype)
            teamed = steps is None and team_recurrence(
                spec, gx, w_hh, b_ih, b_hh, w_hr, h, c, out, lengths, reverse, int8
            )
            if not teamed:  # (a deferred projection is computed in there)
                _recurrence(
                    spec, gx, w_hh, b_ih, b_hh, w_hr, h, c, out, lengths, reverse, steps, int8
                )
            if out is not y:
                y[...] = out
            return

        if isinstance(gx, Projection):
            gx = gx.compute()  # (whole: BLAS rounds a row differently in fewer rows)

        def piece(b0, b1):
            # A contiguous copy of the piece's rows of the projected input; the state
            # rows are views (updated in place); outputs and tape rows are copied back.
            part = None
            if steps is not None:
                part = Steps(*(np.empty((a.shape[0], b1 - b0, a.shape[2]), a.dtype) for a in steps))
            out = np.empty((y.shape[0], b1 - b0, y.shape[2]), y.dtype)
            with use_gemm(numpy_gemm):
                _recurrence(
                    spec, _rows(gx, b0, b1), w_hh, b_ih, b_hh, w_hr, h[b0:b1], c[b0:b1], out,
                    lengths[b0:b1], reverse, part, int8,
                )  # fmt: skip
            y[:, b0:b1] = out
            for whole, rows in zip(steps or (), part or ()):
                whole[:, b0:b1] = rows

        threads.run(piece, pieces)

    @staticmethod
    def recurrence_backward(spec, *, steps, w_hh, w_hr, lengths, reverse, dy, dh, dc):
        """One layer-direction's BPTT; see :func:`backward_recurrence`."""
        pieces = batch_pieces(dy.shape[1])
        if len(pieces) == 1:
            return backward_recurrence(
                spec, steps, w_hh, w_hr, lengths, reverse, np.ascontiguousarray(dy), dh, dc
            )
        T, B = dy.shape[:2]
        results = _gate_gradients(spec, w_hh, w_hr, T, B, dh.shape[1], dy.dtype)

        def piece(b0, b1):
            part = Steps(*(_rows(a, b0, b1) for a in steps))
            with use_gemm(numpy_gemm):
                rows = backward_recurrence(
                    spec, part, w_hh, w_hr, lengths[b0:b1], reverse, _rows(dy, b0, b1),
                    dh[b0:b1], dc[b0:b1],
                )  # fmt: skip
            for whole, a in zip(results, rows):
                if a is not None:
                    whole[:, b0:b1] = a  # (where dgh is dgx, the same rows twice)

        threads.run(piece, pieces)
        return results


_TILES = threading.local()


def _tiles(wt, T):
    """``wt`` (K, N), a float, bfloat16-bits or int8 matrix stored C-contiguous, packed for
    :func:`fastrnn.tiles.tiles_product`: once for good where ``wt`` never changes (a
    quantized model's, :func:`~fastrnn.tiles.fixed_tiles`), else in this thread's buffer
    of that shape (:func:`_pack`); ``wt`` itself where packing does not pay (fewer than
    ``TILES_MIN_STEPS`` steps) or does not apply (another layout: a transposing pack
    costs more than it saves)."""
    if T < TILES_MIN_STEPS or wt.dtype.kind not in "fui" or not wt.flags.c_contiguous:
        return wt  # (float weights, bfloat16 bits (uint16) or int8)
    fixed = fixed_tiles(wt)
    return fixed if fixed is not None else _pack(wt, tile_width(wt.dtype))


def _panels(wt, T, B, role="w_hh"):
    """``wt`` (K, N), float weights in any layout, packed in panels for the products of
    ``B`` > 1 rows (:func:`fastrnn.tile_gemm.tiles_gemm`), or ``wt`` itself where that
    does not pay: a few rows for a few steps (a pack reads and writes the weights once,
    about a product of 8 rows)."""
    if wt.dtype.kind != "f" or (B < BLAS_MIN_BATCH and T < TILES_MIN_STEPS):
        return wt
    return _pack(wt, panel_width(wt.dtype), role)


def _step_projection(gx, T, B, int8):
    """``(gx, x_proj)`` for the sequence loop: a :class:`Projection` of ``B`` rows as a
    one-step buffer and ``(X, W_ih^T in panels)``, to be computed one step at a time
    inside the recurrence (from ``BLAS_MIN_PIECE`` rows on one thread, see
    ``recurrence._sequence``), else computed now (x_proj None): a recurrence alone on
    more threads leaves them to the whole projection (a batch-32 training step on two
    threads here: 54.5 ms step by step, 51.0 ms whole)."""
    if not isinstance(gx, Projection):
        return gx, None
    X = gx.X
    if (
        B < BLAS_MIN_PIECE
        or threads.current() > 1
        or int8 is not None
        or X.dtype.kind != "f"
        or not X.flags.c_contiguous
    ):
        return gx.compute(), None
    x_proj = (X.reshape(T, B, X.shape[1]), _panels(gx.w_ih.T, T, B, "w_ih"))
    return np.empty((1, B, gx.shape[2]), X.dtype), x_proj


def _pack(wt, W, role="w_hh"):
    """``wt`` (K, N) packed in tiles of ``W`` columns (:func:`fastrnn.tiles.pack_tiles`)
    in this thread's buffer of that shape for that ``role`` (reused: fresh memory costs
    a page fault per 4 KB; the ``TILES_KEPT`` most recent are kept)."""
    shape = (-(-wt.shape[1] // W), wt.shape[0], W)
    kept = _TILES.__dict__.setdefault("buffers", {})
    key = (shape, wt.dtype.str, role)
    p = kept.pop(key, None)
    if p is None:
        p = np.empty(shape, wt.dtype)
    kept[key] = p  # most recently used last
    while len(kept) > TILES_KEPT:
        del kept[next(iter(kept))]
    pack_tiles(wt, p)
    return p


def _recurrence(spec, gx, w_hh, b_ih, b_hh, w_hr, h, c, y, lengths, reverse, steps, int8):
    T, B, GH = gx.shape
    gx, x_proj = _step_projection(gx, T, B, int8)
    kern = spec.kernels
    H, P, dtype = spec.hidden_size, h.shape[1], gx.dtype
    gh = np.empty((B, GH), dtype)
    m = np.empty((B, H), dtype)
    hp = np.empty((B, max(P, H)), dtype)
    # Absent arrays go to the kernels as None (see ``fastrnn.recurrence``).
    w_hr = w_hr if w_hr.shape[0] else None
    tape_gates, tape_h, tape_c = (None, None, None) if steps is None else steps
    if tape_c is not None and tape_c.shape[0] == 0:
        tape_c = None
    if int8 is not None:  # (quantized: stored weights, their scales; tiles at batch 1)
        w_t, s_hh = int8
        if pairs_pay(w_t):  # bfloat16 rows in pairs (the scale's place: their scratch)
            w_t, s_hh = pairs.fixed_pairs(w_t), pairs.scratch(B, w_t.shape[0])
        elif B == 1:
            w_t = _tiles(w_t, T)
    elif B == 1:
        # The per-step product reads W_hh as it is stored: the models' column-major
        # weights as rows of the transpose, a row-major one (a torch parameter's) by its
        # rows through the transposed view (``linalg.product_t``); others are copied.
        w_t = w_hh.T if w_hh.flags.c_contiguous else np.ascontiguousarray(w_hh.T)
        w_t, s_hh = _tiles(w_t, T), None
    else:  # more rows: packed panels (from any layout) where they pay
        w_t, s_hh = _panels(w_hh.T, T, B), None
        if w_t.ndim == 2 and not (w_t.flags.c_contiguous or w_hh.flags.c_contiguous):
            w_t = np.ascontiguousarray(w_t)
    if B < BLAS_MIN_BATCH or w_t.ndim == 3:
        recurrence.LOOPS[kern].sequence(
            gx,
            recurrence.RecurrentWeights(w_t, s_hh, b_ih, b_hh, w_hr),
            h,
            c,
            y,
            lengths,
            reverse,
            spec.activation,
            recurrence.Scratch(gh, m, hp),
            tape_gates,
            tape_h,
            tape_c,
            x_proj,
        )
        return
    w_hh_t = w_hh.T  # (a quantized model's batch: BLAS over the values its weights stand for)
    for s in range(T):
        t = T - 1 - s if reverse else s
        if tape_h is not None:
            tape_h[t] = h
        if tape_c is not None:
            tape_c[t] = c
        gemm(h, w_hh_t, out=gh)
        kern.cell_step(
            gx[t], gh, b_ih, b_hh, w_hr, h, c, y[t], t, lengths, spec.activation, m, hp,
            tape_gates,
        )  # fmt: skip


def _gate_gradients(spec, w_hh, w_hr, T, B, P, dtype):
    """Empty ``(dgx, dgh, dhp, mt)`` for :func:`backward_recurrence` (``dgh`` is ``dgx``
    unless the cell type distinguishes them; ``dhp``, ``mt`` None without projection)."""
    dgx = reuse.empty((T, B, w_hh.shape[0]), dtype)
    dgh = reuse.empty(dgx.shape, dtype) if spec.kernels.SEPARATE_DGH else dgx
    if w_hr.shape[0] == 0:
        return dgx, dgh, None, None
    return dgx, dgh, np.empty((T, B, P), dtype), np.empty((T, B, spec.hidden_size), dtype)


def backward_recurrence(spec, steps, w_hh, w_hr, lengths, reverse, dy, dh, dc):
    """Backward through one layer-direction's recurrence.

    ``dh``/``dc`` enter as the final-state gradients and leave as the
    initial-state gradients. Returns ``(dgx, dgh, dhp, mt)``: the
    pre-activation gradients for ``W_ih`` and ``W_hh`` (the same array unless the
    cell type distinguishes them), and with projection the ``dh`` and
    ``o * tanh(c)`` sequences whose product is ``W_hr``'s gradient.
    """
    kern = spec.kernels
    gates, h_prev, c_prev = steps
    T, B, _ = gates.shape
    H, dtype = spec.hidden_size, gates.dtype
    dgx, dgh, dhp, mt = _gate_gradients(spec, w_hh, w_hr, T, B, dh.shape[1], dtype)
    w_hr = w_hr if dhp is not None else None  # absent arrays go to the kernels as None
    dm = np.empty((B, H), dtype)
    if c_prev.shape[0] == 0:
        c_prev = _placeholder(dtype)
    # rows of W_hh (the models store it column-major): tiles for one row, panels for
    # more where packing pays, else as they are
    w_rows = _panels(w_hh, T, B) if B > 1 else None
    if w_rows is None or w_rows.ndim == 2:
        w_rows = np.ascontiguousarray(w_hh)
        w_rows = _tiles(w_rows, T) if B == 1 else w_rows
    if B < BLAS_MIN_BATCH or w_rows.ndim == 3:
        recurrence.LOOPS[kern].backward_sequence(
            (gates, h_prev, c_prev),
            w_rows,
            w_hr,
            lengths,
            reverse,
            spec.activation,
            dy,
            dh,
            dc,
            recurrence.GateGradients(dgx, dgh, dhp, mt),
            dm,
        )
        return dgx, dgh, dhp, mt
    tmp = np.empty_like(dh)
    last_c = c_prev.shape[0] - 1
    # Same values as w_hh, laid out column-major once, so that every per-step product
    # finds the transposed operand contiguous (what GEMM libraries want as "B^T").
    w_hh = np.ascontiguousarray(w_hh.T).T
    for s in range(T):
        t = s if reverse else T - 1 - s
        kern.backward_step(
            t, lengths, gates[t], h_prev[t], c_prev[min(t, last_c)], w_hr, dy[t], dh, dc,
            dgx[t], dgh[t], dhp, mt, dm, spec.activation,
        )  # fmt: skip
        gemm(dgh[t], w_hh, out=tmp)
        dh += tmp
    return dgx, dgh, dhp, mt


CPU = CPUBackend()
