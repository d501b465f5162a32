"""Scaled dot-product attention of short sequences, forward and backward, each one kernel
call over memory given by address: for (batch, head) slices whose scores are a few
thousand numbers, two batched BLAS products and a separate softmax pass cost more in
calls and passes than the arithmetic (the torch bridge's ``scaled_dot_product_attention``
without a mask; larger ones take torch's batched products around :mod:`.sdpa`'s softmax).

For each of ``N`` slices: ``S = scale · Q Kᵀ`` (Lq, Lk), causal rows limited to keys
``j <= i`` (torch's ``is_causal``), ``P = softmax(S)`` row by row, ``O = P V``; the
forward also writes each row's log-sum-exp, from which the backward recomputes ``P``.
Every address is of C-contiguous memory of the dtype of the scalar ``like`` holding the
shape written beside it; the caller checks shapes, dtypes and contiguity.
"""

import math

import numpy as np

from .._jit import kernel
from ..activations import exp_nonpos
from ..linalg import array_at, matmul_nt


@kernel
def _probabilities(S, causal, scale, lse, fresh):
    """Scores ``S`` (Lq, Lk) into probabilities in place: times ``scale``, causal keys
    beyond the row's index zeroed; with ``fresh`` the softmax, writing each row's
    log-sum-exp into ``lse`` (Lq,), else ``exp(S - lse)`` from the given one. The
    exponentials run over the whole block in one loop (rows of 16 are too short for
    the vectorised loop; the polynomial ``exp`` is the costly part)."""
    Lq, Lk = S.shape
    for i in range(Lq):
        row = S[i]
        end = min(i + 1, Lk) if causal else Lk
        top = row[0] * scale
        for j in range(end):
            row[j] *= scale
            if row[j] > top or row[j] != row[j]:
                top = row[j]
        if fresh:
            lse[i] = top  # (its log-sum-exp once the sum is known)
        shift = lse[i]
        for j in range(end):
            row[j] -= shift
        for j in range(end, Lk):
            row[j] = -np.inf  # exp gives 0
    flat = S.reshape(Lq * Lk)
    for t in range(Lq * Lk):
        flat[t] = exp_nonpos(flat[t])
    if fresh:
        for i in range(Lq):
            row = S[i]
            total = row[0] - row[0]
            for j in range(Lk):
                total += row[j]
            for j in range(Lk):
                row[j] = row[j] / total
            lse[i] += math.log(total)


@kernel
def forward_at(like, N, Lq, Lk, D, Dv, q, k, v, causal, scale, out, lse, scratch):
    """``out`` (N, Lq, Dv) and ``lse`` (N, Lq) from ``q`` (N, Lq, D), ``k`` (N, Lk, D),
    ``v`` (N, Lk, Dv); ``scratch`` holds ``Lq·Lk`` elements."""
    qa = array_at(q, (N, Lq, D), like)
    ka = array_at(k, (N, Lk, D), like)
    va = array_at(v, (N, Lk, Dv), like)
    oa = array_at(out, (N, Lq, Dv), like)
    la = array_at(lse, (N, Lq), like)
    P = array_at(scratch, (Lq, Lk), like)
    zero = like - like
    for n in range(N):
        matmul_nt(qa[n], ka[n], P)
        _probabilities(P, causal, scale, la[n], True)
        on, vn = oa[n], va[n]
        for i in range(Lq):
            oi, pi = on[i], P[i]
            for e in range(Dv):
                oi[e] = zero
            for j in range(min(i + 1, Lk) if causal else Lk):
                p, vj = pi[j], vn[j]
                for e in range(Dv):
                    oi[e] += p * vj[e]


@kernel
def backward_at(
    like, N, Lq, Lk, D, Dv, q, k, v, out, lse, d_out, causal, scale, dq, dk, dv, scratch
):
    """The gradients of :func:`forward_at` from ``d_out`` (N, Lq, Dv): ``dq``, ``dk``,
    ``dv`` (the inputs' shapes), each written. ``scratch`` holds ``2·Lq·Lk``
    elements."""
    qa = array_at(q, (N, Lq, D), like)
    ka = array_at(k, (N, Lk, D), like)
    va = array_at(v, (N, Lk, Dv), like)
    oa = array_at(out, (N, Lq, Dv), like)
    la = array_at(lse, (N, Lq), like)
    doa = array_at(d_out, (N, Lq, Dv), like)
    dqa = array_at(dq, (N, Lq, D), like)
    dka = array_at(dk, (N, Lk, D), like)
    dva = array_at(dv, (N, Lk, Dv), like)
    work = array_at(scratch, (2 * Lq * Lk,), like)
    P = work[: Lq * Lk].reshape((Lq, Lk))
    dS = work[Lq * Lk :].reshape((Lq, Lk))
    zero = like - like
    for n in range(N):
        qn, kn, don = qa[n], ka[n], doa[n]
        matmul_nt(qn, kn, P)
        _probabilities(P, causal, scale, la[n], False)
        matmul_nt(don, va[n], dS)  # dP = dO Vᵀ
        dqn, dkn, dvn = dqa[n], dka[n], dva[n]
        dkn[:] = zero
        dvn[:] = zero
        for i in range(Lq):
            end = min(i + 1, Lk) if causal else Lk
            doi, oi = don[i], oa[n, i]
            row = zero
            for e in range(Dv):
                row += doi[e] * oi[e]
            pi, di, dqi, qi = P[i], dS[i], dqn[i], qn[i]
            for c in range(D):
                dqi[c] = zero
            for j in range(end):
                g = pi[j] * (di[j] - row) * scale  # dS_ij
                kj, dkj, dvj = kn[j], dkn[j], dvn[j]
                for c in range(D):
                    dqi[c] += g * kj[c]
                    dkj[c] += g * qi[c]
                p = pi[j]
                for e in range(Dv):
                    dvj[e] += p * doi[e]
