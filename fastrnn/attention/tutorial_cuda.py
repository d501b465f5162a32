"""The seq2seq tutorial's ``Attn`` on device arrays (the twin of :mod:`.tutorial`)."""

import numpy as np

from .. import _validation as check
from ..cuda import _device, linalg
from ._common import AttentionTape, _tape
from ._common_cuda import _add_row_kernel, _inputs, _launch_rows, _softmax_backward, _softmax_rows
from .tutorial import _concat_attn_shapes


def _concat_columns(a, b):
    """[a, b] along axis 1 for 2-D device arrays."""
    out = _device.empty((a.shape[0], a.shape[1] + b.shape[1]), a.dtype)
    linalg.copy(a, out[:, : a.shape[1]])
    linalg.copy(b, out[:, a.shape[1] :])
    return out


def concat_attn_train(Q, K, V, W_attn, b_attn, W_combine, b_combine):
    """:func:`fastrnn.attention.concat_attn_train` on device arrays."""
    Q, K, V, W_attn, b_attn, W_combine, b_combine = _inputs(
        ("Q", "K", "V", "W_attn", "b_attn", "W_combine", "b_combine"),
        (Q, K, V, W_attn, b_attn, W_combine, b_combine),
    )
    B, qs, L, vs2 = _concat_attn_shapes(Q, K, V, W_attn, b_attn, W_combine, b_combine)
    dt = np.dtype(Q.dtype)
    x = _concat_columns(Q[0], K[0])  # (B, qs + ks)
    w = linalg.gemm(x, W_attn, _device.empty((B, L), dt), trans_b=True)
    _launch_rows(_add_row_kernel, B * L, w, b_attn)
    w = _softmax_rows(w.reshape((B, 1, L)))
    applied = linalg.gemm(w, linalg.reshaped(V, V.shape), _device.empty((B, 1, vs2), dt))
    z = _concat_columns(Q[0], applied.reshape((B, vs2)))
    out = linalg.gemm(z, W_combine, _device.empty((B, W_combine.shape[0]), dt), trans_b=True)
    _launch_rows(_add_row_kernel, out.size, out, b_combine)
    saved = dict(
        V=linalg.reshaped(V, V.shape),
        x=x,
        w=w,
        z=z,
        W_attn=W_attn,
        W_combine=W_combine,
        qs=qs,
        device=True,
    )
    return (
        out.reshape((1,) + tuple(out.shape)),
        w.reshape((B, L)),
        AttentionTape("concat_attn", saved),
    )


def concat_attn(Q, K, V, W_attn, b_attn, W_combine, b_combine):
    """:func:`fastrnn.attention.concat_attn` on device arrays."""
    out, w, _ = concat_attn_train(Q, K, V, W_attn, b_attn, W_combine, b_combine)
    return out, w


def concat_attn_backward(tape, grad_output, grad_weights=None):
    """:func:`fastrnn.attention.concat_attn_backward` for a device tape."""
    s = _tape(tape, "concat_attn")
    w, z, V = s["w"], s["z"], s["V"]
    B, _, L = w.shape
    vs2 = V.shape[2]
    qs = s["qs"]
    dt = np.dtype(w.dtype)
    (go,) = _inputs(("grad_output",), (grad_output,), dt)
    check.shape("grad_output", go, (1, B, s["W_combine"].shape[0]))
    go = go.reshape(tuple(go.shape[1:]))
    dz = linalg.gemm(go, s["W_combine"], _device.empty(z.shape, dt))
    dapplied = linalg.copy(dz[:, qs:]).reshape((B, 1, vs2))
    dw = linalg.gemm(dapplied, V, _device.empty((B, 1, L), dt), trans_b=True)
    if grad_weights is not None:
        (gw,) = _inputs(("grad_weights",), (grad_weights,), dt)
        check.shape("grad_weights", gw, (B, L))
        linalg.add_into(dw, linalg.reshaped(gw, (B, 1, L)))
    dV = linalg.gemm(w, dapplied, _device.empty(V.shape, dt), trans_a=True)
    dlogits = _softmax_backward(w, dw).reshape((B, L))
    dx = linalg.gemm(dlogits, s["W_attn"], _device.empty(s["x"].shape, dt))
    dQ = linalg.add_into(linalg.copy(dz[:, :qs]), dx[:, :qs])
    dK = linalg.copy(dx[:, qs:])
    return dict(
        Q=dQ.reshape((1, B, qs)),
        K=dK.reshape((1,) + tuple(dK.shape)),
        V=dV,
        W_attn=linalg.gemm(dlogits, s["x"], _device.empty(s["W_attn"].shape, dt), trans_a=True),
        b_attn=linalg.column_sum(dlogits, _device.empty((L,), dt)),
        W_combine=linalg.gemm(go, z, _device.empty(s["W_combine"].shape, dt), trans_a=True),
        b_combine=linalg.column_sum(go, _device.empty((go.shape[1],), dt)),
    )
