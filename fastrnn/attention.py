"""Attention over NumPy arrays, forward and backward.

Four scoring rules, each with ``f(...)``, ``f_train(...) -> (..., tape)`` and
``f_backward(tape, grad) -> gradients``:

* :func:`scaled_dot_product` — ``softmax(Q Kᵀ · scale + mask) V`` over any
  leading (batch, head) dimensions;
* :func:`additive` — Bahdanau: ``score_j = v · tanh(W_q q + W_k k_j)``;
* :func:`luong` — ``dot`` (``q · k_j``), ``general`` (``q · (W k_j + b)``) and
  ``concat`` (``v · tanh(W [q; k_j] + b)``), as in PyTorch's chatbot tutorial;
* :func:`concat_attn` — the ``Attn`` module of PyTorch's seq2seq tutorial:
  ``softmax(Linear([Q, K])) · V``, then ``attn_combine([Q, applied])``.

Masks: True (or nonzero) means "attend"; a float mask is added to the
scores. A row whose keys are all masked gives zeros and zero gradients
(torch's behaviour). Softmax is max-subtracted, so float32 inputs of ±1e4
give no NaN or inf.

Memory: the scaled dot-product kernel fuses score → softmax → weighted sum
for one query row at a time and keeps a single row of scores (O(Lk) per row);
training stores the output and each row's log-sum-exp, and the backward pass
**recomputes** the scores from Q and K (cheaper than storing the Lq × Lk
probabilities, which is what dominates memory at long lengths). The additive
rules store their key projections (already needed for the forward GEMM) and
recompute the tanh in the backward pass.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import _validation as check
from ._jit import kernel
from .activations import exp_nonpos, tanh
from .cuda import is_device_array
from .linalg import gemm

__all__ = [
    "scaled_dot_product",
    "scaled_dot_product_train",
    "scaled_dot_product_backward",
    "additive",
    "additive_train",
    "additive_backward",
    "luong",
    "luong_train",
    "luong_backward",
    "concat_attn",
    "concat_attn_train",
    "concat_attn_backward",
    "AttentionTape",
]


# ----------------------------------------------------------------------------- kernels


@kernel
def _mask_block(S, madd, mbool, causal, scale, B1, q0):
    """Scale the score block ``S`` (N, b, Lk) for query rows q0..q0+b in place and
    set masked entries to -inf. Masks are 4-D views (B0, B1, Lq, Lk) or empty."""
    N, b, Lk = S.shape
    has_add, has_bool = madd.shape[0] > 0, mbool.shape[0] > 0
    for n in range(N):
        b0, b1 = n // B1, n % B1
        for r in range(b):
            i = q0 + r
            row = S[n, r]
            for j in range(Lk):
                row[j] *= scale
            if has_add:
                for j in range(Lk):
                    row[j] += madd[b0, b1, i, j]
            if has_bool:
                for j in range(Lk):
                    if not mbool[b0, b1, i, j]:
                        row[j] = -np.inf
            if causal:
                for j in range(i + 1, Lk):
                    row[j] = -np.inf


@kernel
def _softmax_block(S, madd, mbool, causal, scale, B1, q0, lse):
    """Scores -> probabilities in place, row by row (max-subtracted); ``lse`` receives
    each row's log-sum-exp, -inf for a fully masked row (whose probabilities are 0)."""
    _mask_block(S, madd, mbool, causal, scale, B1, q0)
    N, b, Lk = S.shape
    for n in range(N):
        for r in range(b):
            row = S[n, r]
            m = row[0]  # typed like the scores, so exp_nonpos stays in their precision
            for j in range(1, Lk):
                if row[j] > m:
                    m = row[j]
            if m == -np.inf:
                row[:] = 0
                lse[n, q0 + r] = -np.inf
                continue
            total = m * 0  # m is finite here; row[0] may be -inf (and -inf * 0 is NaN)
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
    _mask_block(S, madd, mbool, causal, scale, B1, q0)
    N, b, Lk = S.shape
    for n in range(N):
        for r in range(b):
            row = S[n, r]
            L = lse[n, q0 + r]
            if L == -np.inf:
                row[:] = 0
                continue
            zero = L * 0
            for j in range(Lk):
                row[j] = exp_nonpos(min(row[j] - L, zero))


@kernel
def _dscores_block(P, dP, dO, O, scale):
    """dS = P * (dP - rowsum(dO * O)) * scale, written into dP."""
    N, b, Lk = P.shape
    for n in range(N):
        for r in range(b):
            o, do = O[n, r], dO[n, r]
            big_d = o[0] * 0
            for t in range(o.shape[0]):
                big_d += o[t] * do[t]
            p, dp = P[n, r], dP[n, r]
            for j in range(Lk):
                dp[j] = p[j] * (dp[j] - big_d) * scale


@kernel
def _additive_forward(pq, pk, bias, vvec, values, mbool, context, weights):
    """score_bj = v · tanh(pq_b + pk_bj + bias); masked softmax over j; context_b = Σ w_bj v_bj.

    ``pq`` (B, H), ``pk`` (B, L, H), ``values`` (B, L, dv), ``mbool`` (B, L) or empty.
    """
    B, L, H = pk.shape
    for b in range(B):
        w = weights[b]
        m = -np.inf
        for j in range(L):
            if mbool.shape[0] > 0 and not mbool[b, j]:
                w[j] = -np.inf
                continue
            acc = pq[b, 0] * 0
            for h in range(H):
                acc += vvec[h] * tanh(pq[b, h] + pk[b, j, h] + bias[h])
            w[j] = acc
            # the max of the *stored* scores: acc may carry more precision than w, and at
            # |score| ~ 1e30 the difference alone would underflow every exp to 0
            m = max(m, w[j])
        ctx = context[b]
        ctx[:] = 0
        if m == -np.inf:
            w[:] = 0
            continue
        total = 0.0
        for j in range(L):
            p = math.exp(w[j] - m)
            w[j] = p
            total += p
        for j in range(L):
            w[j] = w[j] / total
            if w[j] != 0:
                for t in range(ctx.shape[0]):
                    ctx[t] += w[j] * values[b, j, t]


# ----------------------------------------------------------------------------- helpers


@dataclass
class AttentionTape:
    """What an attention ``*_backward`` needs from its ``*_train``."""

    kind: str
    saved: dict


def _device_twin(fn):
    """Send device arrays (and tapes recorded on the device) to ``fastrnn.cuda.attention``'s
    function of the same name."""

    @functools.wraps(fn)
    def dispatch(first, *args, **kwargs):
        if isinstance(first, AttentionTape):
            on_device = first.saved.get("device", False)
        else:
            on_device = type(first) is not np.ndarray and is_device_array(first)
        if on_device:
            from .cuda import attention as gpu

            return getattr(gpu, fn.__name__)(first, *args, **kwargs)
        return fn(first, *args, **kwargs)

    return dispatch


def _floats(names, arrays, dtype=None):
    """Check that the named arrays are float32/float64 arrays of one dtype."""
    out = []
    for name, a in zip(names, arrays):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{name} must be a numpy array; got {type(a).__name__}")
        a = check.to_numpy(a)
        if a.dtype not in check.FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64; got {a.dtype}")
        dtype = dtype or a.dtype
        if a.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype} (like {names[0]}); got {a.dtype}")
        out.append(a)
    return out


def _mask4(mask, batch, Lq, Lk, B0, B1, dtype):
    """Split a user mask into (additive float, bool) 4-D views over (B0, B1, Lq, Lk)."""
    none_f = np.empty((0, 0, 0, 0), dtype)
    none_b = np.empty((0, 0, 0, 0), np.bool_)
    if mask is None:
        return none_f, none_b
    mask = check.to_numpy(mask)
    target = tuple(batch) + (Lq, Lk)
    try:
        full = np.broadcast_to(mask, target)
    except ValueError:
        raise ValueError(
            f"mask must be broadcastable to {target} (batch..., Lq, Lk); got {mask.shape}"
        ) from None
    full = full.reshape(B0, B1, Lq, Lk)
    if mask.dtype == np.bool_:
        return none_f, full
    if mask.dtype.kind in "iu":
        return none_f, full != 0
    if mask.dtype.kind == "f":
        return full.astype(dtype, copy=False), none_b
    raise TypeError(f"mask must be bool (True = attend) or a float additive mask; got {mask.dtype}")


def _unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach ``shape``."""
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


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


def _additive_shapes(query, keys, values, W_q, W_k, v):
    """Check the additive-attention operands; returns ``(B, L, H)``."""
    if query.ndim != 2:
        raise ValueError(f"query must have shape (batch, query_size); got {query.shape}")
    B, qs = query.shape
    if keys.ndim != 3 or keys.shape[0] != B:
        raise ValueError(f"keys must have shape ({B}, L, key_size); got {keys.shape}")
    L, ks = keys.shape[1:]
    if values.ndim != 3 or tuple(values.shape[:2]) != (B, L):
        raise ValueError(f"values must have shape ({B}, {L}, value_size); got {values.shape}")
    if W_q.ndim != 2 or W_q.shape[1] != qs:
        raise ValueError(f"W_q must have shape (hidden, {qs}); got {W_q.shape}")
    H = W_q.shape[0]
    check.shape("W_k", W_k, (H, ks))
    check.shape("v", v, (H,))
    return B, L, H


def _luong_shapes(query, keys):
    if (
        query.ndim != 2
        or keys.ndim != 3
        or keys.shape[0] != query.shape[0]
        or keys.shape[2] != query.shape[1]
    ):
        raise ValueError(
            f"query must have shape (batch, hidden) and keys (batch, L, hidden); "
            f"got {query.shape} and {keys.shape}"
        )


def _concat_attn_shapes(Q, K, V, W_attn, b_attn, W_combine, b_combine):
    """Check the tutorial ``Attn``'s operands; returns ``(B, qs, L, vs2)``."""
    if Q.ndim != 3 or Q.shape[0] != 1:
        raise ValueError(f"Q must have shape (1, batch, query_size); got {Q.shape}")
    B, qs = Q.shape[1:]
    if K.ndim != 3 or tuple(K.shape[:2]) != (1, B):
        raise ValueError(f"K must have shape (1, {B}, key_size); got {K.shape}")
    if V.ndim != 3 or V.shape[0] != B:
        raise ValueError(f"V must have shape ({B}, value_size1, value_size2); got {V.shape}")
    L, vs2 = V.shape[1:]
    check.shape("W_attn", W_attn, (L, qs + K.shape[2]))
    check.shape("b_attn", b_attn, (L,))
    if W_combine.ndim != 2 or W_combine.shape[1] != qs + vs2:
        raise ValueError(
            f"W_combine must have shape (output_size, {qs + vs2}); got {W_combine.shape}"
        )
    check.shape("b_combine", b_combine, (W_combine.shape[0],))
    return B, qs, L, vs2


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


# ----------------------------------------------------------------------------- scaled dot product


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


def _tape(tape, kind):
    if not isinstance(tape, AttentionTape) or tape.kind != kind:
        raise TypeError(
            f"tape must come from the matching *_train function ({kind}); got "
            f"{getattr(tape, 'kind', type(tape).__name__)}"
        )
    return tape.saved


# ----------------------------------------------------------------------------- additive


def _additive_prepare(query, keys, values, W_q, W_k, v, bias, mask):
    query, keys, values, W_q, W_k, v = _floats(
        ("query", "keys", "values", "W_q", "W_k", "v"), (query, keys, values, W_q, W_k, v)
    )
    B, L, H = _additive_shapes(query, keys, values, W_q, W_k, v)
    ks = keys.shape[2]
    if bias is None:
        bias = np.zeros(H, query.dtype)
    check.shape("bias", bias, (H,))
    mb = np.empty((0, 0), np.bool_)
    if mask is not None:
        mask = check.to_numpy(mask)
        if mask.shape != (B, L):
            raise ValueError(f"mask must have shape ({B}, {L}) (True = attend); got {mask.shape}")
        mb = np.ascontiguousarray(mask != 0)
    pq = gemm(query, W_q.T)
    pk = gemm(np.ascontiguousarray(keys).reshape(B * L, ks), W_k.T).reshape(B, L, H)
    return dict(
        query=query,
        keys=keys,
        values=np.ascontiguousarray(values),
        W_q=W_q,
        W_k=W_k,
        v=np.ascontiguousarray(v),
        bias=np.ascontiguousarray(bias),
        mask=mb,
        pq=pq,
        pk=pk,
    )


def _additive_run(p):
    B, L, _ = p["pk"].shape
    dt = p["pq"].dtype
    context = np.empty((B, p["values"].shape[2]), dt)
    weights = np.empty((B, L), dt)
    _additive_forward(p["pq"], p["pk"], p["bias"], p["v"], p["values"], p["mask"], context, weights)
    return context, weights


@_device_twin
def additive(query, keys, values, W_q, W_k, v, mask=None):
    """Bahdanau (additive) attention.

    ``score_j = v · tanh(W_q query + W_k keys_j)``, ``weights = softmax(score)``,
    ``context = Σ_j weights_j values_j``.

    Parameters
    ----------
    query : ndarray, shape (batch, query_size)
    keys : ndarray, shape (batch, L, key_size)
    values : ndarray, shape (batch, L, value_size)
    W_q : ndarray, shape (hidden, query_size)
    W_k : ndarray, shape (hidden, key_size)
    v : ndarray, shape (hidden,)
    mask : ndarray of bool, shape (batch, L), optional
        True = attend (e.g. ``np.arange(L) < lengths[:, None]``).

    Returns
    -------
    context : ndarray, shape (batch, value_size)
    weights : ndarray, shape (batch, L)
    """
    return _additive_run(_additive_prepare(query, keys, values, W_q, W_k, v, None, mask))


@_device_twin
def additive_train(query, keys, values, W_q, W_k, v, mask=None, bias=None):
    """:func:`additive` plus a tape; ``bias`` (hidden,) is added inside the tanh if given."""
    p = _additive_prepare(query, keys, values, W_q, W_k, v, bias, mask)
    context, weights = _additive_run(p)
    p["weights"] = weights
    return context, weights, AttentionTape("additive", p)


@_device_twin
def additive_backward(tape, grad_context, grad_weights=None):
    """Gradients of :func:`additive`: a dict with ``query, keys, values, W_q, W_k, v, bias``.

    ``grad_weights`` (batch, L) is the gradient w.r.t. the returned weights, if they
    feed the loss too.
    """
    p = _tape(tape, "additive")
    w, values = p["weights"], p["values"]
    dt = w.dtype
    grad_context = _floats(("grad_context",), (grad_context,), dt)[0]
    check.shape("grad_context", grad_context, (w.shape[0], values.shape[2]))
    dw = np.einsum("bt,blt->bl", grad_context, values)
    if grad_weights is not None:
        grad_weights = _floats(("grad_weights",), (grad_weights,), dt)[0]
        check.shape("grad_weights", grad_weights, w.shape)
        dw = dw + grad_weights
    dvalues = w[:, :, None] * grad_context[:, None, :]
    dscore = w * (dw - np.sum(w * dw, axis=1, keepdims=True))  # masked: w = 0 -> 0
    e = np.tanh(p["pq"][:, None, :] + p["pk"] + p["bias"])
    da = dscore[:, :, None] * p["v"] * (1.0 - e * e)  # (B, L, H)
    dpq = da.sum(axis=1)
    B, L, H = da.shape
    da2 = da.reshape(B * L, H)
    keys2 = np.ascontiguousarray(p["keys"]).reshape(B * L, -1)
    return dict(
        query=gemm(dpq, p["W_q"]),
        keys=gemm(da2, p["W_k"]).reshape(p["keys"].shape),
        values=dvalues,
        W_q=gemm(dpq.T, p["query"]),
        W_k=gemm(da2.T, keys2),
        v=np.einsum("bl,blh->h", dscore, e),
        bias=da2.sum(axis=0),
    )


# ----------------------------------------------------------------------------- Luong


def _luong_weights(method, weights, H):
    if method == "dot":
        return ()
    if method not in ("general", "concat"):
        raise ValueError(f"method must be 'dot', 'general' or 'concat'; got {method!r}")
    parts = tuple(weights) if isinstance(weights, (tuple, list)) else (weights,)
    if method == "general":
        if len(parts) == 1:
            parts = parts + (None,)
        if len(parts) != 2:
            raise ValueError("weights for method='general' must be W or (W, b)")
        W, b = parts
        check.shape("weights[0] (W)", W, (H, H))
        return W, b
    if len(parts) == 2:
        parts = (parts[0], None, parts[1])
    if len(parts) != 3:
        raise ValueError("weights for method='concat' must be (W, v) or (W, b, v)")
    W, b, v = parts
    check.shape("weights[0] (W)", W, (H, 2 * H))
    check.shape("weights[-1] (v)", v, (H,))
    return W, b, v


@_device_twin
def luong_train(query, keys, values=None, method="dot", weights=None, mask=None):
    """:func:`luong` plus a tape for :func:`luong_backward`."""
    values = keys if values is None else values
    query, keys, values = _floats(("query", "keys", "values"), (query, keys, values))
    _luong_shapes(query, keys)
    H = query.shape[1]
    params = _luong_weights(method, weights, H)
    if method == "concat":
        W, b, v = params
        ctx, w, tape = additive_train(
            query, keys, values, W[:, :H], W[:, H:], v, mask, None if b is None else b
        )
        return ctx, w, AttentionTape("luong", dict(method=method, inner=tape, H=H))
    qq = query if method == "dot" else gemm(query, params[0])  # q · (W k + b) = (Wᵀq) · k + const
    mask3 = None if mask is None else check.to_numpy(mask)[:, None, :]
    if mask3 is not None and mask3.shape != (query.shape[0], 1, keys.shape[1]):
        raise ValueError(
            f"mask must have shape {(query.shape[0], keys.shape[1])}; got {mask.shape}"
        )
    p = _sdpa_prepare(qq[:, None, :], keys, values, mask3, False, 1.0)
    out, lse, probs = _sdpa_run(p, probs=True)
    p.update(out=out, lse=lse)
    saved = dict(
        method=method,
        inner=AttentionTape("sdpa", p),
        H=H,
        query=query,
        params=params,
        qq=qq,
        probs=probs[:, 0],
    )
    return out[:, 0], probs[:, 0], AttentionTape("luong", saved)


@_device_twin
def luong(query, keys, values=None, method="dot", weights=None, mask=None):
    """Luong attention for one query per batch row.

    Parameters
    ----------
    query : ndarray, shape (batch, hidden)
    keys : ndarray, shape (batch, L, hidden)
    values : ndarray, shape (batch, L, value_size), optional (defaults to ``keys``)
    method : {"dot", "general", "concat"}
        ``dot``: ``q · k_j``; ``general``: ``q · (W k_j + b)``, ``weights = W`` or
        ``(W, b)`` with W (hidden, hidden); ``concat``: ``v · tanh(W [q; k_j] + b)``,
        ``weights = (W, v)`` or ``(W, b, v)`` with W (hidden, 2·hidden).
    mask : ndarray of bool, shape (batch, L), optional

    Returns
    -------
    context : ndarray, shape (batch, value_size)
    weights : ndarray, shape (batch, L)
    """
    ctx, w, _ = luong_train(query, keys, values, method, weights, mask)
    return ctx, w


@_device_twin
def luong_backward(tape, grad_context, grad_weights=None):
    """Gradients of :func:`luong`: dict with ``query, keys, values`` and ``W``
    (``general``/``concat``), ``b`` (if given) and ``v`` (``concat``).

    ``grad_weights`` (batch, L) is the gradient w.r.t. the returned weights, if any.
    """
    s = _tape(tape, "luong")
    if s["method"] == "concat":
        g = additive_backward(s["inner"], grad_context, grad_weights)
        out = dict(
            query=g["query"],
            keys=g["keys"],
            values=g["values"],
            W=np.concatenate([g["W_q"], g["W_k"]], axis=1),
            b=g["bias"],
            v=g["v"],
        )
        return out
    p = s["inner"].saved
    grad_context = _floats(("grad_context",), (grad_context,), p["out"].dtype)[0]
    check.shape("grad_context", grad_context, (p["out"].shape[0], p["out"].shape[2]))
    dqq, dk, dv = scaled_dot_product_backward(s["inner"], grad_context[:, None, :])
    dqq = dqq[:, 0]
    if grad_weights is not None:  # through the returned weights: softmax backward
        w = s["probs"]
        grad_weights = _floats(("grad_weights",), (grad_weights,), w.dtype)[0]
        check.shape("grad_weights", grad_weights, w.shape)
        dscore = w * (grad_weights - np.sum(w * grad_weights, axis=1, keepdims=True))
        dqq = dqq + np.einsum("bl,blh->bh", dscore, p["k"])
        dk = dk + dscore[:, :, None] * s["qq"][:, None, :]
    out = dict(keys=dk, values=dv)
    if s["method"] == "dot":
        out["query"] = dqq
        return out
    W, b = s["params"]
    out["query"] = gemm(dqq, W.T)
    out["W"] = gemm(s["query"].T, dqq)
    if b is not None:
        out["b"] = np.zeros_like(b)  # q · b is constant over keys: softmax ignores it
    return out


# ----------------------------------------------------------------------------- tutorial Attn


@_device_twin
def concat_attn_train(Q, K, V, W_attn, b_attn, W_combine, b_combine):
    """The seq2seq tutorial's ``Attn`` with a tape; see :func:`concat_attn`."""
    Q, K, V, W_attn, b_attn, W_combine, b_combine = _floats(
        ("Q", "K", "V", "W_attn", "b_attn", "W_combine", "b_combine"),
        (Q, K, V, W_attn, b_attn, W_combine, b_combine),
    )
    B, qs, L, vs2 = _concat_attn_shapes(Q, K, V, W_attn, b_attn, W_combine, b_combine)
    x = np.concatenate([Q[0], K[0]], axis=1)  # (B, qs + ks)
    logits = gemm(x, W_attn.T) + b_attn
    logits = logits - logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)  # (B, L)
    applied = np.einsum("bl,blv->bv", w, V)  # (B, vs2)
    z = np.concatenate([Q[0], applied], axis=1)
    out = (gemm(z, W_combine.T) + b_combine)[None]  # (1, B, out)
    saved = dict(Q=Q, K=K, V=V, x=x, w=w, z=z, W_attn=W_attn, W_combine=W_combine, qs=qs)
    return out, w, AttentionTape("concat_attn", saved)


@_device_twin
def concat_attn(Q, K, V, W_attn, b_attn, W_combine, b_combine):
    """The ``Attn`` module of PyTorch's seq2seq tutorial, on arrays.

    ``weights = softmax([Q, K] W_attnᵀ + b_attn)``; ``applied = weights · V``;
    ``output = [Q, applied] W_combineᵀ + b_combine``.

    Parameters
    ----------
    Q : ndarray, shape (1, batch, query_size)
    K : ndarray, shape (1, batch, key_size)
    V : ndarray, shape (batch, value_size1, value_size2)
    W_attn, b_attn : ndarray, shapes (value_size1, query_size + key_size), (value_size1,)
    W_combine, b_combine : ndarray, shapes (output_size, query_size + value_size2), (output_size,)

    Returns
    -------
    output : ndarray, shape (1, batch, output_size)
    weights : ndarray, shape (batch, value_size1)
    """
    out, w, _ = concat_attn_train(Q, K, V, W_attn, b_attn, W_combine, b_combine)
    return out, w


@_device_twin
def concat_attn_backward(tape, grad_output, grad_weights=None):
    """Gradients of :func:`concat_attn`: dict with ``Q, K, V, W_attn, b_attn, W_combine,
    b_combine``."""
    s = _tape(tape, "concat_attn")
    w, z = s["w"], s["z"]
    dt = w.dtype
    grad_output = _floats(("grad_output",), (grad_output,), dt)[0]
    check.shape("grad_output", grad_output, (1, w.shape[0], s["W_combine"].shape[0]))
    go = grad_output[0]
    dz = gemm(go, s["W_combine"])
    qs = s["qs"]
    dq_direct, dapplied = dz[:, :qs], dz[:, qs:]
    dw = np.einsum("bv,blv->bl", dapplied, s["V"])
    if grad_weights is not None:
        dw = dw + _floats(("grad_weights",), (grad_weights,), dt)[0]
    dV = w[:, :, None] * dapplied[:, None, :]
    dlogits = w * (dw - np.sum(w * dw, axis=1, keepdims=True))
    dx = gemm(dlogits, s["W_attn"])
    return dict(
        Q=(dq_direct + dx[:, :qs])[None],
        K=dx[:, qs:][None],
        V=dV,
        W_attn=gemm(dlogits.T, s["x"]),
        b_attn=dlogits.sum(axis=0),
        W_combine=gemm(go.T, z),
        b_combine=go.sum(axis=0),
    )
