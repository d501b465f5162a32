"""A whole stack over pieces of the batch, one piece per thread, forward and BPTT.

From ``BLAS_MIN_BATCH`` rows a batch is cut into pieces of at least
:data:`STACK_MIN_PIECE` rows, one per thread (:func:`stack_pieces`), and each piece runs
every layer and direction of :func:`fastrnn.engine.driver.forward` (or ``backward``) on
its own rows from start to end: its input projections, recurrences and, in BPTT, its
share of the weight gradients (``dG_pᵀ X_p`` over the piece's rows of every step), with
no synchronisation until all pieces are done. The weight gradients are then summed
piece by piece, once per call. Nothing else is shared: a piece's products run
single-threaded on its own copies of its rows, so a row's arithmetic is that of one
thread given only those rows (a weight gradient is the same sum in another order:
float32 results agree with one thread's within rounding, not bit for bit).

Splitting each layer's recurrence alone (``CPUBackend.recurrence``) left the products
between them (projections, weight gradients) to be split separately, every one a
round trip through the thread pool and copies of the whole tape's rows in and out; a
batch-32 LSTM trained on two threads no faster than on one.
"""

import numpy as np

from .. import threads
from ..linalg import numpy_gemm, use_gemm
from . import driver
from .cpu import BLAS_MIN_BATCH, CPU, _rows
from .tape import Gradients, Steps, Tape

#: Fewest rows of a piece of a whole stack: a batch of 32 rows splits in two.
STACK_MIN_PIECE = 16


def stack_pieces(backend, B, T):
    """The row ranges a (T, B, ·) stack is split into, one per thread; None where it runs
    whole: one thread's worth of rows, fewer than ``BLAS_MIN_BATCH`` (the layers split
    their recurrences there), no steps, or not the CPU backend."""
    if backend is not CPU or B < BLAS_MIN_BATCH or T == 0:
        return None
    found = threads.split(B, STACK_MIN_PIECE)
    return found if len(found) > 1 else None


def forward(spec, params, x, h, c, lengths, backend, train, masks, int8, *, pieces):
    """:func:`fastrnn.engine.driver.forward` of every piece of rows on a thread of its
    own: ``(y, tape)``, the tape whole (every piece's rows in place)."""
    T, B, _ = x.shape
    D, P = spec.num_directions, spec.output_size
    y = np.empty((T, B, D * P), spec.dtype)
    tapes = {}

    def piece(b0, b1):
        hp, cp = _rows(h, b0, b1), _rows(c, b0, b1)
        with use_gemm(numpy_gemm):
            yp, tapes[b0] = driver.forward(
                spec, params, _rows(x, b0, b1), hp, cp, np.ascontiguousarray(lengths[b0:b1]),
                backend, train, [_rows(m, b0, b1) for m in masks], int8,
            )  # fmt: skip
        y[:, b0:b1], h[:, b0:b1], c[:, b0:b1] = yp, hp, cp

    threads.run(piece, pieces)
    if not train:
        return y, None
    parts = [tapes[b0] for b0, _ in pieces]

    def whole(arrays):
        return np.concatenate(arrays, axis=1)

    steps = [Steps(*map(whole, zip(*same))) for same in zip(*(t.steps for t in parts))]
    inputs = [whole(same) for same in zip(*(t.layer_inputs[1:] for t in parts))]
    return y, Tape(lengths, [x, *inputs], steps, list(masks))


def backward(spec, params, tape, dy, dh, dc, backend, input_grad, param_grads, *, pieces):
    """:func:`fastrnn.engine.driver.backward` of every piece of rows on a thread of its
    own, the pieces' weight gradients summed: the same :class:`Gradients`."""
    results = {}

    def piece(b0, b1):
        part = Tape(
            np.ascontiguousarray(tape.lengths[b0:b1]),
            [_rows(a, b0, b1) for a in tape.layer_inputs],
            [Steps(*(_rows(a, b0, b1) for a in s)) for s in tape.steps],
            [_rows(m, b0, b1) for m in tape.masks],
        )
        dhp, dcp = _rows(dh, b0, b1), _rows(dc, b0, b1)
        with use_gemm(numpy_gemm):
            results[b0] = driver.backward(
                spec, params, part, _rows(dy, b0, b1), dhp, dcp, backend, input_grad,
                param_grads,
            )  # fmt: skip
        dh[:, b0:b1], dc[:, b0:b1] = dhp, dcp

    threads.run(piece, pieces)
    parts = [results[b0] for b0, _ in pieces]
    grads = parts[0].params
    for other in parts[1:]:
        for name, g in (grads or {}).items():
            g += other.params[name]
    d_input = None
    if parts[0].input is not None:
        d_input = np.concatenate([p.input for p in parts], axis=1)
    return Gradients(d_input, (dh, dc), grads)
