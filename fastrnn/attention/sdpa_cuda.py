"""Scaled dot-product attention on device arrays (the twin of :mod:`.sdpa`)."""

import math

import numpy as np

from .. import _validation as check
from ..cuda import _device, linalg
from ._common import AttentionTape, _mask4, _tape
from ._common_cuda import _device_masks, _dscores_kernel, _host, _inputs, _launch_rows, _softmax
from .sdpa import BLOCK_ELEMS, _sdpa_shapes


def _sdpa_prepare(q, k, v, mask, causal, scale):
    q, k, v = _inputs(("query", "key", "value"), (q, k, v))
    _sdpa_shapes(q, k, v)
    nq, nk, nv = q.ndim, k.ndim, v.ndim
    batch = tuple(q.shape[: nq - 2])
    if tuple(k.shape[: nk - 2]) != batch or tuple(v.shape[: nv - 2]) != batch:
        raise ValueError(
            f"on the GPU, query {q.shape}, key {k.shape} and value {v.shape} "
            f"must have the same leading dimensions (no broadcasting)"
        )
    Lq, d = q.shape[nq - 2 :]
    Lk, dv = v.shape[nv - 2 :]
    N = int(np.prod(batch, dtype=np.int64))
    B1 = batch[-1] if batch else 1
    B0 = N // B1 if B1 else 0
    madd, mbool = _mask4(_host(mask), batch, Lq, Lk, B0, B1, np.dtype(q.dtype))
    madd, mbool = _device_masks(madd, mbool)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    return dict(
        q=linalg.reshaped(q, (N, Lq, d)),
        k=linalg.reshaped(k, (N, Lk, d)),
        v=linalg.reshaped(v, (N, Lk, dv)),
        madd=madd,
        mbool=mbool,
        causal=bool(causal),
        scale=scale,
        B1=max(B1, 1),
        batch=batch,
        device=True,
    )


def _row_blocks(p):
    N, Lq, _ = p["q"].shape
    Lk = p["k"].shape[1]
    rows = max(1, min(Lq, BLOCK_ELEMS // max(1, N * Lk)))
    return [(q0, min(Lq, q0 + rows)) for q0 in range(0, Lq, rows)]


def _sdpa_run(p, probs=False):
    """Per block of query rows: S = Q Kᵀ, masked softmax, O = P V. ``probs``: keep
    every row's probabilities (one block over all rows)."""
    q, k, v = p["q"], p["k"], p["v"]
    N, Lq, _ = q.shape
    Lk, dv = v.shape[1:]
    dt = q.dtype
    out = _device.empty((N, Lq, dv), dt)
    lse = _device.empty((N, Lq), dt)
    blocks = [(0, Lq)] if probs else _row_blocks(p)
    S = _device.empty((N, blocks[0][1] - blocks[0][0], Lk), dt)
    for q0, q1 in blocks:
        Sb = S[:, : q1 - q0]
        linalg.gemm(q[:, q0:q1], k, Sb, trans_b=True)
        _softmax(Sb, p, q0, lse, False)
        linalg.gemm(Sb, v, out[:, q0:q1])
    return out, lse, (S if probs else None)


def scaled_dot_product(q, k, v, mask=None, causal=False, scale=None):
    """:func:`fastrnn.attention.scaled_dot_product` on device arrays."""
    p = _sdpa_prepare(q, k, v, mask, causal, scale)
    out, _, _ = _sdpa_run(p)
    return out.reshape(p["batch"] + tuple(out.shape[1:]))


def scaled_dot_product_train(q, k, v, mask=None, causal=False, scale=None):
    """:func:`fastrnn.attention.scaled_dot_product_train` on device arrays."""
    p = _sdpa_prepare(q, k, v, mask, causal, scale)
    out, lse, _ = _sdpa_run(p)
    p.update(out=out, lse=lse)
    return out.reshape(p["batch"] + tuple(out.shape[1:])), AttentionTape("sdpa", p)


def scaled_dot_product_backward(tape, grad_out):
    """:func:`fastrnn.attention.scaled_dot_product_backward` for a device tape."""
    p = _tape(tape, "sdpa")
    out = p["out"]
    dt = np.dtype(out.dtype)
    (grad_out,) = _inputs(("grad_out",), (grad_out,), dt)
    check.shape("grad_out", grad_out, p["batch"] + tuple(out.shape[1:]))
    do_all = linalg.reshaped(grad_out, out.shape)
    q, k, v = p["q"], p["k"], p["v"]
    N, Lq, _ = q.shape
    Lk = k.shape[1]
    dq = _device.empty(q.shape, dt)
    dk = _device.empty(k.shape, dt)
    dv = _device.empty(v.shape, dt)
    blocks = _row_blocks(p)
    S = _device.empty((N, blocks[0][1] - blocks[0][0], Lk), dt)
    dP = _device.empty(S.shape, dt)
    for q0, q1 in blocks:  # recompute P from Q, K and the saved log-sum-exp
        Sb, dPb = S[:, : q1 - q0], dP[:, : q1 - q0]
        linalg.gemm(q[:, q0:q1], k, Sb, trans_b=True)
        _softmax(Sb, p, q0, p["lse"], True)
        do = do_all[:, q0:q1]
        first = 0.0 if q0 == 0 else 1.0
        linalg.gemm(Sb, do, dv, beta=first, trans_a=True)
        linalg.gemm(do, v, dPb, trans_b=True)
        _launch_rows(
            _dscores_kernel, N * (q1 - q0), Sb, dPb, do, out[:, q0:q1], dt.type(p["scale"])
        )
        linalg.gemm(dPb, k, dq[:, q0:q1])
        linalg.gemm(dPb, q[:, q0:q1], dk, beta=first, trans_a=True)
    batch = p["batch"]
    return tuple(g.reshape(batch + tuple(g.shape[1:])) for g in (dq, dk, dv))
