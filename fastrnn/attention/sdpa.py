"""Scaled dot-product attention on the CPU: ``softmax(Q Kᵀ · scale + mask) V``."""

import math

import numpy as np

from .. import _validation as check
from .._jit import kernel
from ..activations import exp_nonpos
from ..linalg import gemm
from ._common import AttentionTape, _device_twin, _floats, _mask4, _tape, _unbroadcast


@kernel
def _mask_row(row, madd, mbool, causal, scale, b0, b1, i):
    """Scale query row ``i``'s scores ``row`` (Lk,) in place and set its masked entries
    to -inf. Masks are 4-D views (B0, B1, Lq, Lk) or empty."""
    Lk = row.shape[0]
    for j in range(Lk):
        row[j] *= scale
    if madd.shape[0] > 0:
        for j in range(Lk):
            row[j] += madd[b0, b1, i, j]
    if mbool.shape[0] > 0:
        for j in range(Lk):
            if not mbool[b0, b1, i, j]:
                row[j] = -np.inf
    if causal:
        for j in range(i + 1, Lk):
            row[j] = -np.inf


@kernel
def _row_max(row):
    """The largest entry of ``row`` (NaN entries ignored), in eight independent lanes: a
    single running maximum is a chain of dependent compares that does not vectorise."""
    n = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
    j = 0
    while j + 8 <= n:
        a0, a1, a2, a3 = row[j], row[j + 1], row[j + 2], row[j + 3]
        a4, a5, a6, a7 = row[j + 4], row[j + 5], row[j + 6], row[j + 7]
        m0 = a0 if a0 > m0 else m0
        m1 = a1 if a1 > m1 else m1
        m2 = a2 if a2 > m2 else m2
        m3 = a3 if a3 > m3 else m3
        m4 = a4 if a4 > m4 else m4
        m5 = a5 if a5 > m5 else m5
        m6 = a6 if a6 > m6 else m6
        m7 = a7 if a7 > m7 else m7
        j += 8
    while j < n:
        m0 = row[j] if row[j] > m0 else m0
        j += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return m4 if m4 > m0 else m0


@kernel
def _softmax_block(S, madd, mbool, causal, scale, B1, q0, lse):
    """Scores -> probabilities in place, row by row (scaled and masked, max-subtracted;
    each row's passes run while it is in L1); ``lse`` receives each row's log-sum-exp,
    -inf for a fully masked row (whose probabilities are 0)."""
    N, b, Lk = S.shape
    for n in range(N):
        for r in range(b):
            row = S[n, r]
            _mask_row(row, madd, mbool, causal, scale, n // B1, n % B1, q0 + r)
            m = _row_max(row)  # typed like the scores: exp_nonpos stays in their precision
            if m == -np.inf:
                row[:] = 0
                lse[n, q0 + r] = -np.inf
                continue
            total = m - m  # a zero of the scores' dtype (m * 0 would be a float64)
            for j in range(Lk):
                e = exp_nonpos(row[j] - m)
                row[j] = e
                total += e
            inv = 1 / total
            for j in range(Lk):
                row[j] *= inv
            lse[n, q0 + r] = m + math.log(total)


@kernel
def _probs_block(S, madd, mbool, causal, scale, B1, q0, lse):
    """Recompute probabilities from scores and the forward's log-sum-exp, in place."""
    N, b, Lk = S.shape
    for n in range(N):
        for r in range(b):
            row = S[n, r]
            _mask_row(row, madd, mbool, causal, scale, n // B1, n % B1, q0 + r)
            L = lse[n, q0 + r]
            if L == -np.inf:
                row[:] = 0
                continue
            zero = L - L  # L is finite here
            for j in range(Lk):
                row[j] = exp_nonpos(min(row[j] - L, zero))


@kernel
def _dscores_block(P, dP, dO, O, scale):
    """dS = P * (dP - rowsum(dO * O)) * scale, written into dP."""
    N, b, Lk = P.shape
    for n in range(N):
        for r in range(b):
            o, do = O[n, r], dO[n, r]
            big_d = scale - scale
            for t in range(o.shape[0]):
                big_d += o[t] * do[t]
            p, dp = P[n, r], dP[n, r]
            for j in range(Lk):
                dp[j] = p[j] * (dp[j] - big_d) * scale


_NO_ADD = {np.dtype(np.float32): np.empty((0, 0, 0, 0), np.float32),
           np.dtype(np.float64): np.empty((0, 0, 0, 0), np.float64)}  # fmt: skip
_NO_BOOL = np.empty((0, 0, 0, 0), np.bool_)


def softmax_scores(S, causal, scale, lse):
    """Scores to probabilities in place, for callers that compute ``S = Q Kᵀ`` (N, Lq,
    Lk) themselves (unmasked but for ``causal``): ``S`` times ``scale``, softmax over
    each row, ``lse`` (N, Lq) the rows' log-sum-exp. C-contiguous arrays of one dtype."""
    _softmax_block(S, _NO_ADD[S.dtype], _NO_BOOL, causal, S.dtype.type(scale), 1, 0, lse)


def recompute_probs(S, causal, scale, lse):
    """The probabilities of :func:`softmax_scores` again, in place, from the same scores
    and its ``lse`` (the backward's recomputation)."""
    _probs_block(S, _NO_ADD[S.dtype], _NO_BOOL, causal, S.dtype.type(scale), 1, 0, lse)


def score_gradients(P, dP, dO, O, scale):
    """``dS = P * (dP - rowsum(dO * O)) * scale`` into ``dP`` (N, Lq, Lk), from the
    probabilities ``P``, ``dP = dO Vᵀ``, the output ``O`` and its gradient ``dO``."""
    _dscores_block(P, dP, dO, O, P.dtype.type(scale))


def _sdpa_shapes(q, k, v):
    """Check q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv) (any array type)."""
    for name, a in (("query", q), ("key", k), ("value", v)):
        if a.ndim < 2:
            raise ValueError(f"{name} must have shape (..., L, features); got {a.shape}")
        if a.shape[a.ndim - 1] == 0:
            raise ValueError(f"{name} must have at least one feature; got shape {a.shape}")
    if q.shape[q.ndim - 1] != k.shape[k.ndim - 1]:
        raise ValueError(
            f"query and key must have the same last dimension; got {q.shape} and {k.shape}"
        )
    if k.shape[k.ndim - 2] != v.shape[v.ndim - 2]:
        raise ValueError(
            f"key and value must have the same length (dimension -2); got {k.shape} and {v.shape}"
        )


def _sdpa_prepare(q, k, v, mask, causal, scale):
    q, k, v = _floats(("query", "key", "value"), (q, k, v))
    _sdpa_shapes(q, k, v)
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"the leading dimensions of query {q.shape}, key {k.shape} and value "
            f"{v.shape} do not broadcast"
        ) from None
    Lq, d = q.shape[-2:]
    Lk, dv = v.shape[-2:]
    N = int(np.prod(batch, dtype=np.int64))
    B1 = batch[-1] if batch else 1
    B0 = N // B1 if B1 else 0
    qf = np.ascontiguousarray(np.broadcast_to(q, batch + (Lq, d))).reshape(N, Lq, d)
    kf = np.ascontiguousarray(np.broadcast_to(k, batch + (Lk, d))).reshape(N, Lk, d)
    vf = np.ascontiguousarray(np.broadcast_to(v, batch + (Lk, dv))).reshape(N, Lk, dv)
    madd, mbool = _mask4(mask, batch, Lq, Lk, B0, B1, q.dtype)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    return dict(
        q=qf,
        k=kf,
        v=vf,
        madd=madd,
        mbool=mbool,
        causal=bool(causal),
        scale=scale,
        B1=max(B1, 1),
        batch=batch,
        shapes=(q.shape, k.shape, v.shape),
    )


#: Scores held at once (elements): query rows are processed in blocks of this size
#: over every batch entry, so memory is O(Lk) per row, never O(Lq * Lk) per head.
BLOCK_ELEMS = 1 << 20


def _row_blocks(p):
    N, Lq, _ = p["q"].shape
    Lk = p["k"].shape[1]
    rows = max(1, min(Lq, BLOCK_ELEMS // max(1, N * Lk)))
    return [(q0, min(Lq, q0 + rows)) for q0 in range(0, Lq, rows)]


def _sdpa_run(p, probs=False):
    """Per block of query rows: S = Q Kᵀ (BLAS), masked softmax in place (Numba),
    O = P V (BLAS). Returns ``(out, lse, probs or empty)``."""
    q, k, v = p["q"], p["k"], p["v"]
    N, Lq, _ = q.shape
    Lk, dv = v.shape[1:]
    dt = q.dtype
    out = np.empty((N, Lq, dv), dt)
    lse = np.empty((N, Lq), dt)
    pr = np.empty((N, Lq, Lk), dt) if probs else np.empty((0, 0, 0), dt)
    kT = k.transpose(0, 2, 1)
    for q0, q1 in _row_blocks(p):
        S = np.ascontiguousarray(gemm(q[:, q0:q1], kT))
        _softmax_block(S, p["madd"], p["mbool"], p["causal"], dt.type(p["scale"]), p["B1"], q0, lse)
        out[:, q0:q1] = gemm(S, v)
        if probs:
            pr[:, q0:q1] = S
    return out, lse, pr


@_device_twin
def scaled_dot_product(q, k, v, mask=None, causal=False, scale=None):
    """Scaled dot-product attention ``softmax(q kᵀ · scale + mask) v``.

    Parameters
    ----------
    q : ndarray, shape (..., Lq, d)
    k : ndarray, shape (..., Lk, d)
    v : ndarray, shape (..., Lk, dv)
        Leading dimensions broadcast (e.g. (batch, heads)).
    mask : ndarray, optional
        Broadcastable to (..., Lq, Lk): bool (True = attend) or float (added to scores).
    causal : bool
        Query i attends keys j <= i (torch's ``is_causal``).
    scale : float, optional
        Defaults to ``1 / sqrt(d)``.

    Returns
    -------
    out : ndarray, shape (..., Lq, dv)
    """
    p = _sdpa_prepare(q, k, v, mask, causal, scale)
    out, _, _ = _sdpa_run(p)
    return out.reshape(p["batch"] + out.shape[1:])


@_device_twin
def scaled_dot_product_train(q, k, v, mask=None, causal=False, scale=None):
    """:func:`scaled_dot_product` that also returns a tape for the backward pass."""
    p = _sdpa_prepare(q, k, v, mask, causal, scale)
    out, lse, _ = _sdpa_run(p)
    p.update(out=out, lse=lse)
    return out.reshape(p["batch"] + out.shape[1:]), AttentionTape("sdpa", p)


@_device_twin
def scaled_dot_product_backward(tape, grad_out):
    """Gradients ``(dq, dk, dv)`` of :func:`scaled_dot_product`, shaped like q, k, v.

    For self-attention (the same array passed as q, k and v) the gradient of
    that array is ``dq + dk + dv``.
    """
    p = _tape(tape, "sdpa")
    out = p["out"]
    grad_out = _floats(("grad_out",), (grad_out,), out.dtype)[0]
    expected = p["batch"] + out.shape[1:]
    check.shape("grad_out", grad_out, expected)
    grad_out = np.ascontiguousarray(grad_out).reshape(out.shape)
    q, k, v, dt = p["q"], p["k"], p["v"], out.dtype
    dq = np.empty_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    kT, vT = k.transpose(0, 2, 1), v.transpose(0, 2, 1)
    scale = dt.type(p["scale"])
    for q0, q1 in _row_blocks(p):  # recompute P from Q, K and the saved log-sum-exp
        S = np.ascontiguousarray(gemm(q[:, q0:q1], kT))
        _probs_block(S, p["madd"], p["mbool"], p["causal"], scale, p["B1"], q0, p["lse"])
        do = grad_out[:, q0:q1]
        dv += gemm(S.transpose(0, 2, 1), do)
        dP = np.ascontiguousarray(gemm(do, vT))
        _dscores_block(S, dP, do, out[:, q0:q1], scale)
        dq[:, q0:q1] = gemm(dP, k)
        dk += gemm(dP.transpose(0, 2, 1), q[:, q0:q1])
    batch = p["batch"]
    return tuple(
        _unbroadcast(g.reshape(batch + g.shape[1:]), shape)
        for g, shape in zip((dq, dk, dv), p["shapes"])
    )
