"""Attention of one query per batch row (a decoder's step), forward and backward, each
one kernel call over memory given by address: Luong ``dot``/``general`` and additive
(Bahdanau, Luong ``concat``) scores through the torch bridge, where NumPy views of the
tensors and the general path's checks would cost more than the arithmetic.

For each row ``b``, over its ``L`` keys: a score ``s_j`` (dot: ``q·k_j + shift``, with
``shift`` a per-row constant, ``q·b`` of Luong ``general``, which softmax ignores but
whose gradient torch's formula has; additive: ``u·tanh(qp + kp_j)`` from the two
projections, which the caller computes), masked keys left out, ``w = softmax(s)``,
``context = Σ_j w_j v_j``. A row with every key masked gets zero weights and a zero
context (torch's ``nan_to_num`` of the softmax), and zero gradients.

Every address is of C-contiguous memory of the dtype of the scalar ``like`` (the mask:
one byte per key, nonzero = attend) holding the shape written beside it; 0 stands for
an absent optional array. The caller (the torch bridge's attention) checks shapes,
dtypes and contiguity; nothing here can.
"""

import numpy as np

from .._jit import kernel
from ..activations import exp_nonpos, tanh
from ..linalg import array_at


@kernel
def _softmax_context(wb, vb, cb, top, zero):
    """Row ``b``'s scores ``wb`` (L,) (``-inf`` where masked, ``top`` their maximum)
    into softmax weights, and ``cb`` (Dv,) = their sum of the rows of ``vb`` (L, Dv)."""
    for e in range(cb.shape[0]):
        cb[e] = zero
    if top == -np.inf:
        for j in range(wb.shape[0]):
            wb[j] = zero
        return
    total = zero
    for j in range(wb.shape[0]):
        wb[j] = exp_nonpos(wb[j] - top)
        total += wb[j]
    for j in range(wb.shape[0]):
        wb[j] = wb[j] / total
        vj = vb[j]
        for e in range(cb.shape[0]):
            cb[e] += wb[j] * vj[e]


@kernel
def _masked_softmax_context(wb, mrow, masked, vb, cb, zero):
    """Row ``b``'s raw scores ``wb`` (L,), keys with ``mrow[j] == 0`` left out when
    ``masked``, into softmax weights and ``cb`` (Dv,) their sum of the rows of ``vb``."""
    top = np.float32(-np.inf)  # (float32: unifies with the data's dtype)
    for j in range(wb.shape[0]):
        if masked and mrow[j] == 0:
            wb[j] = -np.inf
        elif wb[j] > top or wb[j] != wb[j]:
            top = wb[j]
    _softmax_context(wb, vb, cb, top, zero)


@kernel
def _weight_gradient(j, vb, dcb, dwb, has_dw, zero):
    """``g_j``, the gradient reaching weight ``j``: ``d_weights_j + d_context · v_j``."""
    g = dwb[j] if has_dw else zero
    vj = vb[j]
    for e in range(dcb.shape[0]):
        g += dcb[e] * vj[e]
    return g


@kernel
def _mean_weight_gradient(wb, vb, dcb, dwb, has_dw, zero):
    """``Σ_j w_j g_j``: with it a score's gradient is ``w_j (g_j - Σ_i w_i g_i)``."""
    mean = zero
    for j in range(wb.shape[0]):
        mean += wb[j] * _weight_gradient(j, vb, dcb, dwb, has_dw, zero)
    return mean


@kernel
def dot_forward_at(like, B, L, D, Dv, q, k, v, mask, shift, context, weights):
    """``context`` (B, Dv) and ``weights`` (B, L) from ``q`` (B, D), ``k`` (B, L, D),
    ``v`` (B, L, Dv), ``mask`` (B, L) bytes or 0, ``shift`` (B,) or 0."""
    qa = array_at(q, (B, D), like)
    ka = array_at(k, (B, L, D), like)
    va = array_at(v, (B, L, Dv), like)
    ca = array_at(context, (B, Dv), like)
    wa = array_at(weights, (B, L), like)
    ma = array_at(mask, (B, L if mask != 0 else 0), np.uint8(0))
    sa = array_at(shift, (B if shift != 0 else 0,), like)
    zero = like - like
    for b in range(B):
        qb, wb = qa[b], wa[b]
        for j in range(L):
            kj = ka[b, j]
            s = zero
            for d in range(D):
                s += qb[d] * kj[d]
            wb[j] = s + sa[b] if shift != 0 else s
        _masked_softmax_context(wb, ma[b], mask != 0, va[b], ca[b], zero)


@kernel
def dot_backward_at(like, B, L, D, Dv, q, k, v, weights, d_context, d_weights, dq, dk, dv, dshift):
    """The gradients of :func:`dot_forward_at` (its ``q``, ``k``, ``v`` and ``weights``) from
    ``d_context`` (B, Dv) and ``d_weights`` (B, L) (0 for zero): ``dq`` (B, D), ``dk``
    (B, L, D), ``dv`` (B, L, Dv), ``dshift`` (B,), each written, or 0 when not wanted."""
    qa = array_at(q, (B, D), like)
    ka = array_at(k, (B, L, D), like)
    va = array_at(v, (B, L, Dv), like)
    wa = array_at(weights, (B, L), like)
    dca = array_at(d_context, (B, Dv), like)
    dwa = array_at(d_weights, (B, L if d_weights != 0 else 0), like)
    dqa = array_at(dq, (B, D if dq != 0 else 0), like)
    dka = array_at(dk, (B, L if dk != 0 else 0, D), like)
    dva = array_at(dv, (B, L if dv != 0 else 0, Dv), like)
    dsa = array_at(dshift, (B if dshift != 0 else 0,), like)
    zero = like - like
    for b in range(B):
        wb, dcb, vb, dwb = wa[b], dca[b], va[b], dwa[b]
        mean = _mean_weight_gradient(wb, vb, dcb, dwb, d_weights != 0, zero)
        if dq != 0:
            for d in range(D):
                dqa[b, d] = zero
        total = zero
        for j in range(L):
            ds = wb[j] * (_weight_gradient(j, vb, dcb, dwb, d_weights != 0, zero) - mean)
            total += ds
            if dq != 0:
                kj = ka[b, j]
                for d in range(D):
                    dqa[b, d] += ds * kj[d]
            if dk != 0:
                for d in range(D):
                    dka[b, j, d] = ds * qa[b, d]
            if dv != 0:
                for e in range(Dv):
                    dva[b, j, e] = wb[j] * dcb[e]
        if dshift != 0:
            dsa[b] = total


@kernel
def additive_forward_at(like, B, L, A, Dv, qp, kp, u, v, mask, context, weights):
    """``context`` (B, Dv) and ``weights`` (B, L) from the projections ``qp`` (B, A) and
    ``kp`` (B, L, A), the score vector ``u`` (A,), ``v`` (B, L, Dv), ``mask`` (B, L)
    bytes or 0."""
    qa = array_at(qp, (B, A), like)
    ka = array_at(kp, (B, L, A), like)
    ua = array_at(u, (A,), like)
    va = array_at(v, (B, L, Dv), like)
    ca = array_at(context, (B, Dv), like)
    wa = array_at(weights, (B, L), like)
    ma = array_at(mask, (B, L if mask != 0 else 0), np.uint8(0))
    zero = like - like
    for b in range(B):
        qb, wb = qa[b], wa[b]
        for j in range(L):
            kj = ka[b, j]
            s = zero
            for a in range(A):
                s += ua[a] * tanh(qb[a] + kj[a])
            wb[j] = s
        _masked_softmax_context(wb, ma[b], mask != 0, va[b], ca[b], zero)


@kernel
def additive_backward_at(
    like, B, L, A, Dv, qp, kp, u, v, weights, d_context, d_weights, dqp, dkp, du, dv
):
    """The gradients of :func:`additive_forward_at` from ``d_context`` (B, Dv) and
    ``d_weights`` (B, L) (0 for zero): ``dqp`` (B, A), ``dkp`` (B, L, A), ``du`` (A,),
    always written (one branch-free, vectorised pass over each row's ``A`` terms), and
    ``dv`` (B, L, Dv), or 0 when not wanted. The tanh is recomputed."""
    qa = array_at(qp, (B, A), like)
    ka = array_at(kp, (B, L, A), like)
    ua = array_at(u, (A,), like)
    va = array_at(v, (B, L, Dv), like)
    wa = array_at(weights, (B, L), like)
    dca = array_at(d_context, (B, Dv), like)
    dwa = array_at(d_weights, (B, L if d_weights != 0 else 0), like)
    dqa = array_at(dqp, (B, A), like)
    dka = array_at(dkp, (B, L, A), like)
    dua = array_at(du, (A,), like)
    dva = array_at(dv, (B, L if dv != 0 else 0, Dv), like)
    zero = like - like
    one = np.float32(1)  # (float32: unifies with the data's dtype; an int 1 is float64)
    for a in range(A):
        dua[a] = zero
    for b in range(B):
        wb, dcb, qb, dqb, vb, dwb = wa[b], dca[b], qa[b], dqa[b], va[b], dwa[b]
        mean = _mean_weight_gradient(wb, vb, dcb, dwb, d_weights != 0, zero)
        for a in range(A):
            dqb[a] = zero
        for j in range(L):
            ds = wb[j] * (_weight_gradient(j, vb, dcb, dwb, d_weights != 0, zero) - mean)
            kj, dkj = ka[b, j], dka[b, j]
            for a in range(A):
                t = tanh(qb[a] + kj[a])
                pre = ds * ua[a] * (one - t * t)
                dkj[a] = pre
                dqb[a] += pre
                dua[a] += ds * t
            if dv != 0:
                for e in range(Dv):
                    dva[b, j, e] = wb[j] * dcb[e]


@kernel
def tutorial_forward_at(like, B, Qn, Kn, L, Vn, O, q, k, v, wa, ba, wc, bc, out, weights, app):
    """The seq2seq tutorial's ``Attn`` for ``B`` rows: ``weights`` (B, L) = softmax of
    ``[q, k] W_aᵀ + b_a``, ``app`` (B, Vn) = ``weights · v``, ``out`` (B, O) =
    ``[q, app] W_cᵀ + b_c``; from ``q`` (B, Qn), ``k`` (B, Kn), ``v`` (B, L, Vn),
    ``wa`` (L, Qn + Kn), ``ba`` (L,), ``wc`` (O, Qn + Vn), ``bc`` (O,)."""
    qa = array_at(q, (B, Qn), like)
    ka = array_at(k, (B, Kn), like)
    va = array_at(v, (B, L, Vn), like)
    Wa = array_at(wa, (L, Qn + Kn), like)
    Ba = array_at(ba, (L,), like)
    Wc = array_at(wc, (O, Qn + Vn), like)
    Bc = array_at(bc, (O,), like)
    oa = array_at(out, (B, O), like)
    wts = array_at(weights, (B, L), like)
    aa = array_at(app, (B, Vn), like)
    zero = like - like
    for b in range(B):
        qb, kb, wb, ab = qa[b], ka[b], wts[b], aa[b]
        top = np.float32(-np.inf)  # (float32: unifies with the data's dtype)
        for j in range(L):
            row = Wa[j]
            s = Ba[j]
            for i in range(Qn):
                s += row[i] * qb[i]
            for i in range(Kn):
                s += row[Qn + i] * kb[i]
            wb[j] = s
            if s > top or s != s:
                top = s
        _softmax_context(wb, va[b], ab, top, zero)
        for o in range(O):
            row = Wc[o]
            s = Bc[o]
            for i in range(Qn):
                s += row[i] * qb[i]
            for i in range(Vn):
                s += row[Qn + i] * ab[i]
            oa[b, o] = s


@kernel
def tutorial_backward_at(
    like, B, Qn, Kn, L, Vn, O, q, k, v, wa, wc, weights, app, d_out, d_weights, dq, dk, dv,
    dwa, dba, dwc, dbc, scratch,
):  # fmt: skip
    """The gradients of :func:`tutorial_forward_at` (its inputs, ``weights`` and ``app``)
    from ``d_out`` (B, O) and ``d_weights`` (B, L) (0 for zero), every one written:
    ``dq``, ``dk``, ``dv`` and the four parameters' (their shapes). ``scratch`` holds
    ``L + Vn`` elements."""
    qa = array_at(q, (B, Qn), like)
    ka = array_at(k, (B, Kn), like)
    va = array_at(v, (B, L, Vn), like)
    Wa = array_at(wa, (L, Qn + Kn), like)
    Wc = array_at(wc, (O, Qn + Vn), like)
    wts = array_at(weights, (B, L), like)
    aa = array_at(app, (B, Vn), like)
    doa = array_at(d_out, (B, O), like)
    dwt = array_at(d_weights, (B, L if d_weights != 0 else 0), like)
    dqa = array_at(dq, (B, Qn), like)
    dka = array_at(dk, (B, Kn), like)
    dva = array_at(dv, (B, L, Vn), like)
    dWa = array_at(dwa, (L, Qn + Kn), like)
    dBa = array_at(dba, (L,), like)
    dWc = array_at(dwc, (O, Qn + Vn), like)
    dBc = array_at(dbc, (O,), like)
    work = array_at(scratch, (L + Vn,), like)
    ds, d_app = work[:L], work[L:]
    zero = like - like
    dWa[:] = zero
    dBa[:] = zero
    dWc[:] = zero
    dBc[:] = zero
    for b in range(B):
        qb, kb, wb, ab, dob = qa[b], ka[b], wts[b], aa[b], doa[b]
        dqb, dkb = dqa[b], dka[b]
        # out = [q, app] W_cᵀ + b_c
        dqb[:] = zero
        d_app[:] = zero
        for o in range(O):
            g, row, drow = dob[o], Wc[o], dWc[o]
            dBc[o] += g
            for i in range(Qn):
                dqb[i] += g * row[i]
                drow[i] += g * qb[i]
            for i in range(Vn):
                d_app[i] += g * row[Qn + i]
                drow[Qn + i] += g * ab[i]
        # app = weights · v; weights = softmax(s)
        mean = zero
        for j in range(L):
            vj, dvj = va[b, j], dva[b, j]
            g = dwt[b, j] if d_weights != 0 else zero
            for i in range(Vn):
                g += d_app[i] * vj[i]
                dvj[i] = wb[j] * d_app[i]
            ds[j] = g
            mean += wb[j] * g
        # s = [q, k] W_aᵀ + b_a
        dkb[:] = zero
        for j in range(L):
            d = wb[j] * (ds[j] - mean)
            row, drow = Wa[j], dWa[j]
            dBa[j] += d
            for i in range(Qn):
                dqb[i] += d * row[i]
                drow[i] += d * qb[i]
            for i in range(Kn):
                dkb[i] += d * row[Qn + i]
                drow[Qn + i] += d * kb[i]
