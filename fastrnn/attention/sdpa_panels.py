"""Scaled dot-product attention over packed panels, forward and backward, each one kernel
call over memory given by address (the torch bridge's ``scaled_dot_product_attention``
without a mask, from a few hundred scores per slice up to :data:`PANEL_SCORES`).

For each of ``N`` (batch, head) slices the forward packs ``Kᵀ`` and ``V`` into panels
(:func:`fastrnn.tiles.pack_tiles`' layout, :func:`fastrnn.tile_gemm.panel_width` columns
each) and runs the register-blocked product of :mod:`fastrnn.tile_gemm` for ``S = Q Kᵀ``
and ``O = P V``, the softmax in between while the
slice's scores are in L2. The backward recomputes ``P`` from the forward's row statistics and
makes its five products the same way, the two with a transposed left operand (``Pᵀ dO``,
``dSᵀ Q``) reading it in place. With ``causal`` the products skip the blocks the mask
zeroes (about half the work). Slices of three batched BLAS calls and a softmax pass
(the path above this size) read and write every score three more times.

Every address is of C-contiguous memory of the dtype of the scalar ``like`` holding the
shape written beside it; ``W`` is the panel width; the caller checks shapes, dtypes and
contiguity and sizes ``scratch`` by :func:`forward_scratch` / :func:`backward_scratch`.
"""

import numpy as np

from .._jit import kernel
from ..activations import exp_nonpos
from ..linalg import array_at
from ..tile_gemm import FULL, LOWER, SUM_FROM_ROW, SUM_TO_ROW, padded, times, times_t
from .sdpa import _row_max

#: Scores per slice (Lq·Lk) up to which the bridge runs these kernels (one slice's
#: scores, 1 MB in float32, stay in L2 between the products and the softmax).
PANEL_SCORES = 1 << 18

#: Scores per slice up to which the forward keeps the probabilities for the backward
#: (16 KB a slice in float32, L=64) instead of the backward recomputing them (a pack of
#: ``Kᵀ``, a product and the exponentials: a fifth of its time at L=16 and 64).
KEPT_SCORES = 1 << 12


def keeps_probabilities(Lq, Lk):
    """Whether a forward for a backward keeps the probabilities (:data:`KEPT_SCORES`)."""
    return Lq * Lk <= KEPT_SCORES


@kernel
def forward_scratch(Lq, Lk, D, Dv, W):
    """Elements of :func:`forward_panels`' scratch."""
    return Lq * Lk + max(padded(Lk, W) * D, padded(Dv, W) * Lk)


@kernel
def backward_scratch(Lq, Lk, D, Dv, W):
    """Elements of :func:`backward_panels`' scratch."""
    panels = max(padded(Lk, W) * max(D, Dv), padded(Dv, W) * Lq, padded(D, W) * max(Lq, Lk))
    return 2 * Lq * Lk + panels


@kernel
def _softmax_rows(S, causal, scale, stats, fresh):
    """Scores ``S`` (Lq, Lk) into probabilities in place, keys past a causal row's index
    zero: with ``fresh`` ``softmax(scale · S)`` row by row, writing each row's shift
    (its largest scaled score) and the reciprocal of its sum of exponentials into
    ``stats`` (Lq, 2); else ``exp(scale · S - shift) / sum`` from the given ones (the
    forward's probabilities exactly, and no logarithm per row). The exponentials run
    over the whole block in one loop: 1.3x faster here than a loop per row at L=64 (a
    loop per row that also sums them leaves rows of 16 to scalar code)."""
    Lq, Lk = S.shape
    zero = scale - scale
    s = -scale if scale < 0 else scale
    for i in range(Lq):
        row = S[i]
        end = min(i + 1, Lk) if causal else Lk
        if scale < 0:  # scores times a negative scale peak at the row's minimum
            for j in range(end):
                row[j] = -row[j]
        if fresh:
            m = _row_max(row[:end])
            stats[i, 0] = m * s
            for j in range(end):
                row[j] = (row[j] - m) * s
        else:
            shift = stats[i, 0]
            for j in range(end):
                row[j] = row[j] * s - shift
        for j in range(end, Lk):
            row[j] = -np.inf  # exp gives 0
    flat = S.reshape(Lq * Lk)
    for t in range(Lq * Lk):
        flat[t] = exp_nonpos(flat[t])
    for i in range(Lq):
        row = S[i]
        if fresh:
            total = zero
            for j in range(Lk):
                total += row[j]
            stats[i, 1] = 1 / total
        inv = stats[i, 1]
        for j in range(Lk):
            row[j] *= inv


@kernel
def forward_panels(like, W, N, Lq, Lk, D, Dv, q, k, v, causal, scale, out, stats, probs, scratch):
    """``out`` (N, Lq, Dv) and the softmax's ``stats`` (N, Lq, 2) (:func:`_softmax_rows`)
    from ``q`` (N, Lq, D), ``k`` (N, Lk, D), ``v`` (N, Lk, Dv); the probabilities too
    where ``probs`` (N, Lq, Lk) is given (not 0: :func:`keeps_probabilities`)."""
    qa = array_at(q, (N, Lq, D), like)
    ka = array_at(k, (N, Lk, D), like)
    va = array_at(v, (N, Lk, Dv), like)
    oa = array_at(out, (N, Lq, Dv), like)
    sa = array_at(stats, (N, Lq, 2), like)
    work = array_at(scratch, (forward_scratch(Lq, Lk, D, Dv, W),), like)
    kept = probs != 0
    pa = array_at(probs if kept else scratch, (N if kept else 1, Lq, Lk), like)
    rest = work[Lq * Lk :]
    for n in range(N):
        P = pa[n if kept else 0]
        times_t(qa[n], ka[n], P, LOWER if causal else FULL, rest, W)  # S = Q Kᵀ
        _softmax_rows(P, causal, scale, sa[n], True)
        times(P, va[n], oa[n], SUM_TO_ROW if causal else FULL, False, rest, W)


@kernel
def backward_panels(
    like, W, N, Lq, Lk, D, Dv, q, k, v, out, stats, probs, d_out, causal, scale, dq, dk, dv,
    scratch,
):  # fmt: skip
    """The gradients of :func:`forward_panels` from ``d_out`` (N, Lq, Dv): ``dq``,
    ``dk``, ``dv`` (the inputs' shapes), each written; the probabilities read from
    ``probs`` where the forward kept them (not 0), else recomputed."""
    qa = array_at(q, (N, Lq, D), like)
    ka = array_at(k, (N, Lk, D), like)
    va = array_at(v, (N, Lk, Dv), like)
    oa = array_at(out, (N, Lq, Dv), like)
    sa = array_at(stats, (N, Lq, 2), like)
    doa = array_at(d_out, (N, Lq, Dv), like)
    dqa = array_at(dq, (N, Lq, D), like)
    dka = array_at(dk, (N, Lk, D), like)
    dva = array_at(dv, (N, Lk, Dv), like)
    work = array_at(scratch, (backward_scratch(Lq, Lk, D, Dv, W),), like)
    kept = probs != 0
    pa = array_at(probs if kept else scratch, (N if kept else 1, Lq, Lk), like)
    dS = work[Lq * Lk : 2 * Lq * Lk].reshape((Lq, Lk))
    rest = work[2 * Lq * Lk :]
    lower = LOWER if causal else FULL
    zero = like - like
    for n in range(N):
        qn, kn, vn, don, on = qa[n], ka[n], va[n], doa[n], oa[n]
        P = pa[n if kept else 0]
        if not kept:
            times_t(qn, kn, P, lower, rest, W)  # S = Q Kᵀ
            _softmax_rows(P, causal, scale, sa[n], False)
        times_t(don, vn, dS, lower, rest, W)  # dP = dO Vᵀ
        for i in range(Lq):  # dS = P * (dP - rowsum(dO * O)) * scale
            doi, oi, pi, di = don[i], on[i], P[i], dS[i]
            row = zero
            for e in range(Dv):
                row += doi[e] * oi[e]
            end = min(i + 1, Lk) if causal else Lk
            for j in range(end):
                di[j] = pi[j] * (di[j] - row) * scale
            for j in range(end, Lk):
                di[j] = zero
        times(P, don, dva[n], SUM_FROM_ROW if causal else FULL, True, rest, W)  # Pᵀ dO
        times(dS, kn, dqa[n], SUM_TO_ROW if causal else FULL, False, rest, W)  # dS K
        times(dS, qn, dka[n], SUM_FROM_ROW if causal else FULL, True, rest, W)  # dSᵀ Q
