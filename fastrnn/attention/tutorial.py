"""The ``Attn`` module of PyTorch's seq2seq tutorial on the CPU:
``softmax(Linear([Q, K])) · V``, then ``attn_combine([Q, applied])``."""

import numpy as np

from .. import _validation as check
from ..linalg import gemm
from ._common import AttentionTape, _device_twin, _floats, _tape


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
