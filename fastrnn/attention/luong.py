"""Luong attention on the CPU: ``dot``, ``general`` and ``concat`` scores (PyTorch's
chatbot tutorial)."""

import numpy as np

from .. import _validation as check
from ..linalg import gemm
from ._common import AttentionTape, _device_twin, _floats, _tape
from .additive import additive_backward, additive_train
from .sdpa import _sdpa_prepare, _sdpa_run, scaled_dot_product_backward


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
