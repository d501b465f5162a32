"""Additive (Bahdanau) attention on the CPU: ``score_j = v · tanh(W_q q + W_k k_j)``."""

import math

import numpy as np

from .. import _validation as check
from .._jit import kernel
from ..activations import tanh
from ..linalg import gemm
from ._common import AttentionTape, _device_twin, _floats, _tape


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
