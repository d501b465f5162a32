"""Additive attention on device arrays (the twin of :mod:`.additive`)."""

import math

import numpy as np
from numba import cuda

from .. import _validation as check
from ..cuda import _device, linalg
from ._common import AttentionTape, _tape
from ._common_cuda import (
    _host,
    _inputs,
    _launch_rows,
    _softmax_backward,
    _softmax_rows,
    _sum_axis1_kernel,
)
from .additive import _additive_shapes


@cuda.jit(cache=True)
def _additive_scores_kernel(pq, pk, bias, vvec, mbool, scores):
    """scores[b, 0, j] = v · tanh(pq_b + pk_bj + bias), -inf where ``mbool`` is False."""
    B, L, H = pk.shape
    for idx in range(cuda.grid(1), B * L, cuda.gridsize(1)):
        b, j = idx // L, idx % L
        if mbool.shape[0] > 0 and not mbool[b, j]:
            scores[b, 0, j] = -math.inf
            continue
        acc = 0.0
        for h in range(H):
            acc += vvec[h] * math.tanh(pq[b, h] + pk[b, j, h] + bias[h])
        scores[b, 0, j] = acc


@cuda.jit(cache=True)
def _additive_da_kernel(pq, pk, bias, vvec, dscore, da):
    """da[b, j, h] = dscore[b, 0, j] * v_h * (1 - tanh(pq_bh + pk_bjh + bias_h)^2)."""
    B, L, H = pk.shape
    for idx in range(cuda.grid(1), B * L * H, cuda.gridsize(1)):
        b, r = idx // (L * H), idx % (L * H)
        j, h = r // H, r % H
        e = math.tanh(pq[b, h] + pk[b, j, h] + bias[h])
        da[b, j, h] = dscore[b, 0, j] * vvec[h] * (1 - e * e)


@cuda.jit(cache=True)
def _additive_dv_kernel(pq, pk, bias, dscore, dv):
    """dv[h] = sum_bj dscore[b, 0, j] * tanh(pq_bh + pk_bjh + bias_h)."""
    B, L, H = pk.shape
    for h in range(cuda.grid(1), H, cuda.gridsize(1)):
        acc = 0.0
        for b in range(B):
            for j in range(L):
                acc += dscore[b, 0, j] * math.tanh(pq[b, h] + pk[b, j, h] + bias[h])
        dv[h] = acc


def _additive_prepare(query, keys, values, W_q, W_k, v, bias, mask):
    query, keys, values, W_q, W_k, v = _inputs(
        ("query", "keys", "values", "W_q", "W_k", "v"), (query, keys, values, W_q, W_k, v)
    )
    B, L, H = _additive_shapes(query, keys, values, W_q, W_k, v)
    ks = keys.shape[2]
    dt = np.dtype(query.dtype)
    if bias is None:
        bias = linalg.zeros((H,), dt)
    else:
        (bias,) = _inputs(("bias",), (bias,), dt)
    check.shape("bias", bias, (H,))
    mb = _device.empty((0, 0), np.bool_)
    if mask is not None:
        mask = _host(mask)
        if mask.shape != (B, L):
            raise ValueError(f"mask must have shape ({B}, {L}) (True = attend); got {mask.shape}")
        mb = _device.to_device(np.ascontiguousarray(mask != 0))
    pq = linalg.gemm(query, W_q, _device.empty((B, H), dt), trans_b=True)
    keys2 = linalg.reshaped(keys, (B * L, ks))
    pk = linalg.gemm(keys2, W_k, _device.empty((B * L, H), dt), trans_b=True)
    return dict(
        query=query,
        keys2=keys2,
        keys_shape=tuple(keys.shape),
        values=linalg.reshaped(values, values.shape),
        W_q=W_q,
        W_k=W_k,
        v=v,
        bias=bias,
        mask=mb,
        pq=pq,
        pk=pk.reshape((B, L, H)),
        device=True,
    )


def _additive_run(p):
    B, L, _ = p["pk"].shape
    dt = np.dtype(p["pq"].dtype)
    w = _device.empty((B, 1, L), dt)
    _launch_rows(_additive_scores_kernel, B * L, p["pq"], p["pk"], p["bias"], p["v"], p["mask"], w)
    _softmax_rows(w)
    dv = p["values"].shape[2]
    context = _device.empty((B, 1, dv), dt)
    linalg.gemm(w, p["values"], context)
    return context.reshape((B, dv)), w


def additive(query, keys, values, W_q, W_k, v, mask=None):
    """:func:`fastrnn.attention.additive` on device arrays."""
    context, w = _additive_run(_additive_prepare(query, keys, values, W_q, W_k, v, None, mask))
    return context, w.reshape((w.shape[0], w.shape[2]))


def additive_train(query, keys, values, W_q, W_k, v, mask=None, bias=None):
    """:func:`fastrnn.attention.additive_train` on device arrays."""
    p = _additive_prepare(query, keys, values, W_q, W_k, v, bias, mask)
    context, w = _additive_run(p)
    p["weights"] = w
    return context, w.reshape((w.shape[0], w.shape[2])), AttentionTape("additive", p)


def additive_backward(tape, grad_context, grad_weights=None):
    """:func:`fastrnn.attention.additive_backward` for a device tape."""
    p = _tape(tape, "additive")
    w, values = p["weights"], p["values"]
    B, _, L = w.shape
    V = values.shape[2]
    H = p["v"].shape[0]
    dt = np.dtype(w.dtype)
    (gc,) = _inputs(("grad_context",), (grad_context,), dt)
    check.shape("grad_context", gc, (B, V))
    gc3 = linalg.reshaped(gc, (B, 1, V))
    dw = linalg.gemm(gc3, values, _device.empty((B, 1, L), dt), trans_b=True)
    if grad_weights is not None:
        (gw,) = _inputs(("grad_weights",), (grad_weights,), dt)
        check.shape("grad_weights", gw, (B, L))
        linalg.add_into(dw, linalg.reshaped(gw, (B, 1, L)))
    dvalues = linalg.gemm(w, gc3, _device.empty((B, L, V), dt), trans_a=True)
    dscore = _softmax_backward(w, dw)
    da = _device.empty((B, L, H), dt)
    _launch_rows(_additive_da_kernel, B * L * H, p["pq"], p["pk"], p["bias"], p["v"], dscore, da)
    dvvec = _device.empty((H,), dt)
    _launch_rows(_additive_dv_kernel, H, p["pq"], p["pk"], p["bias"], dscore, dvvec)
    dpq = _device.empty((B, H), dt)
    _launch_rows(_sum_axis1_kernel, B * H, da, dpq)
    da2 = da.reshape((B * L, H))
    ks = p["W_k"].shape[1]
    return dict(
        query=linalg.gemm(dpq, p["W_q"], _device.empty((B, p["W_q"].shape[1]), dt)),
        keys=linalg.gemm(da2, p["W_k"], _device.empty((B * L, ks), dt)).reshape(p["keys_shape"]),
        values=dvalues,
        W_q=linalg.gemm(dpq, p["query"], _device.empty(p["W_q"].shape, dt), trans_a=True),
        W_k=linalg.gemm(da2, p["keys2"], _device.empty(p["W_k"].shape, dt), trans_a=True),
        v=dvvec,
        bias=linalg.column_sum(da2, _device.empty((H,), dt)),
    )
