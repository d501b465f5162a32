"""Luong attention on device arrays (the twin of :mod:`.luong`)."""

import numpy as np

from .. import _validation as check
from ..cuda import _device, linalg
from ._common import AttentionTape, _tape
from ._common_cuda import _host, _inputs, _softmax_backward
from .additive_cuda import additive_backward, additive_train
from .luong import _luong_shapes, _luong_weights
from .sdpa_cuda import _sdpa_prepare, _sdpa_run, scaled_dot_product_backward


def luong_train(query, keys, values=None, method="dot", weights=None, mask=None):
    """:func:`fastrnn.attention.luong_train` on device arrays."""
    values = keys if values is None else values
    query, keys, values = _inputs(("query", "keys", "values"), (query, keys, values))
    _luong_shapes(query, keys)
    B, H = query.shape
    dt = np.dtype(query.dtype)
    params = _luong_weights(method, weights, H)
    if method == "concat":
        W, b, v = params
        (W,) = _inputs(("weights[0] (W)",), (W,), dt)
        ctx, w, tape = additive_train(query, keys, values, W[:, :H], W[:, H:], v, mask, b)
        return ctx, w, AttentionTape("luong", dict(method=method, inner=tape, H=H, device=True))
    if method == "general":
        W, b = params
        (W,) = _inputs(("weights[0] (W)",), (W,), dt)
        params = (W, b)
        qq = linalg.gemm(query, W, _device.empty((B, H), dt))  # q · (W k + b) = (Wᵀq) · k + c
    else:
        qq = query
    mask3 = None
    if mask is not None:
        mask3 = _host(mask)
        if mask3.shape != (B, keys.shape[1]):
            raise ValueError(f"mask must have shape {(B, keys.shape[1])}; got {mask3.shape}")
        mask3 = mask3[:, None, :]
    p = _sdpa_prepare(linalg.reshaped(qq, (B, 1, H)), keys, values, mask3, False, 1.0)
    out, lse, probs = _sdpa_run(p, probs=True)
    p.update(out=out, lse=lse)
    saved = dict(
        method=method,
        inner=AttentionTape("sdpa", p),
        H=H,
        query=query,
        params=params,
        qq=qq,
        probs=probs,
        device=True,
    )
    L = keys.shape[1]
    return out.reshape((B, out.shape[2])), probs.reshape((B, L)), AttentionTape("luong", saved)


def luong(query, keys, values=None, method="dot", weights=None, mask=None):
    """:func:`fastrnn.attention.luong` on device arrays."""
    ctx, w, _ = luong_train(query, keys, values, method, weights, mask)
    return ctx, w


def luong_backward(tape, grad_context, grad_weights=None):
    """:func:`fastrnn.attention.luong_backward` for a device tape."""
    s = _tape(tape, "luong")
    if s["method"] == "concat":
        g = additive_backward(s["inner"], grad_context, grad_weights)
        H = s["H"]
        W = _device.empty((H, 2 * H), g["W_q"].dtype)
        linalg.copy(g["W_q"], W[:, :H])
        linalg.copy(g["W_k"], W[:, H:])
        return dict(
            query=g["query"], keys=g["keys"], values=g["values"], W=W, b=g["bias"], v=g["v"]
        )
    p = s["inner"].saved
    out = p["out"]
    B, _, V = out.shape
    dt = np.dtype(out.dtype)
    (gc,) = _inputs(("grad_context",), (grad_context,), dt)
    check.shape("grad_context", gc, (B, V))
    dqq, dk, dv = scaled_dot_product_backward(s["inner"], linalg.reshaped(gc, (B, 1, V)))
    if grad_weights is not None:  # through the returned weights: softmax backward
        w = s["probs"]
        L = w.shape[2]
        (gw,) = _inputs(("grad_weights",), (grad_weights,), dt)
        check.shape("grad_weights", gw, (B, L))
        dscore = _softmax_backward(w, linalg.copy(linalg.reshaped(gw, (B, 1, L))))
        linalg.gemm(dscore, p["k"], dqq, beta=1.0)
        linalg.gemm(dscore, linalg.reshaped(s["qq"], (B, 1, s["H"])), dk, beta=1.0, trans_a=True)
    dqq = dqq.reshape((B, s["H"]))
    result = dict(keys=dk, values=dv)
    if s["method"] == "dot":
        result["query"] = dqq
        return result
    W, b = s["params"]
    result["query"] = linalg.gemm(dqq, W, _device.empty((B, s["H"]), dt), trans_b=True)
    result["W"] = linalg.gemm(s["query"], dqq, _device.empty(W.shape, dt), trans_a=True)
    if b is not None:
        result["b"] = linalg.zeros((s["H"],), dt)  # q · b is constant over keys
    return result
