"""The attention of one query per batch row (a decoder's step) on the CPU, as autograd
functions around :mod:`fastrnn.attention.step_at`'s kernels: one kernel call forward and
one backward over the tensors' memory, no NumPy views, no general checks per call.
:class:`~fastrnn_torch.attention.LuongAttention` (all three methods) and
:class:`~fastrnn_torch.attention.AdditiveAttention` use them where they apply
(:func:`dot_attention` and :func:`additive_attention` return None elsewhere)."""

import threading

import numpy as np
import torch

from fastrnn.attention import sdpa_panels, step_at
from fastrnn.tile_gemm import panel_width

from . import _cuda
from ._ops import address, cpp_apply, mm, needs_grad

_LIKE = {torch.float32: np.float32(0), torch.float64: np.float64(0)}


class _DotAttention(torch.autograd.Function):
    """One query per row against its keys, on the CPU (Luong ``dot`` and ``general``):
    one :mod:`fastrnn.attention.step_at` kernel call forward, one backward, over the
    tensors' memory. ``mask`` (B, L) bool or None; ``shift`` (B,) a per-row constant
    added to every score (None for none)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, shift):
        out, w = _dot_forward(q, k, v, mask, shift)
        ctx.save_for_backward(q, k, v, w)
        return out, w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_w):
        q, k, v, w = ctx.saved_tensors
        B, L, D = k.shape
        needs = ctx.needs_input_grad
        d_out = q.new_zeros((B, v.shape[2])) if d_out is None else d_out.contiguous()
        d_w = None if d_w is None else d_w.contiguous()
        dq = torch.empty_like(q) if needs[0] else None
        dk = torch.empty_like(k) if needs[1] else None
        dv = torch.empty_like(v) if needs[2] else None
        dshift = q.new_empty(B) if needs[4] else None
        step_at.dot_backward_at(
            _LIKE[q.dtype], B, L, D, v.shape[2], q.data_ptr(), k.data_ptr(), v.data_ptr(),
            w.data_ptr(), d_out.data_ptr(), address(d_w), address(dq), address(dk),
            address(dv), address(dshift),
        )  # fmt: skip
        return dq, dk, dv, None, dshift


def _dot_forward(q, k, v, mask, shift):
    B, L, D = k.shape
    out, w = q.new_empty((B, v.shape[2])), q.new_empty((B, L))
    step_at.dot_forward_at(
        _LIKE[q.dtype], B, L, D, v.shape[2], q.data_ptr(), k.data_ptr(), v.data_ptr(),
        address(mask), address(shift), out.data_ptr(), w.data_ptr(),
    )  # fmt: skip
    return out, w


def dot_attention(query, keys, values, mask, shift=None):
    """:class:`_DotAttention` where it applies (CPU, float32/64, consistent shapes, no
    functorch transform), else None (the general path decides, with its errors)."""
    mask, ok = _one_query(query, keys, values, mask)
    if not ok or query.shape[1] != keys.shape[2]:
        return None
    tensors = (query.contiguous(), keys.contiguous(), values.contiguous(), mask, shift)
    if needs_grad(tensors):
        return _APPLY[_DotAttention](*tensors)
    return _dot_forward(*tensors)


class _ProjectedAdditive(torch.autograd.Function):
    """Additive scores ``u · tanh(qp + kp_j)`` with their projections in one autograd
    node, on the CPU: ``qp = q W_qᵀ (+ b)`` and ``kp = k W_kᵀ`` by torch's products, from
    two weights (:class:`AdditiveAttention`) or from Luong ``concat``'s one ``W`` (A,
    2H) = [W_q W_k] with its bias; the scores, softmax and context by one
    :mod:`fastrnn.attention.step_at` kernel call forward, and one backward before the
    projections' gradients (a node per projection cost more than the attention at
    batch 1). ``W``'s gradient is one contiguous tensor (two column slices would make
    autograd join two halves, one of them transposed)."""

    @staticmethod
    def forward(ctx, q, k, values, u, mask, W_q, W_k, W, b):
        qp, kp = _additive_projections(q, k, W_q, W_k, W, b)
        out, w = _additive_forward(qp, kp, u, values, mask)
        ctx.save_for_backward(q, k, values, u, W_q, W_k, W, qp, kp, w)
        ctx.has_bias = b is not None
        return out, w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_w):
        q, k, values, u, W_q, W_k, W, qp, kp, w = ctx.saved_tensors
        (B, L, A), H = kp.shape, q.shape[1]
        needs = ctx.needs_input_grad
        d_out = qp.new_zeros((B, values.shape[2])) if d_out is None else d_out.contiguous()
        d_w = None if d_w is None else d_w.contiguous()
        # the projections' and u's gradients are always computed (the kernel's inner
        # loop has no branch); the values' only when asked for
        dqp, dkp, du = (torch.empty_like(t) for t in (qp, kp, u))  # du shaped like u
        dv = torch.empty_like(values) if needs[2] else None
        step_at.additive_backward_at(
            _LIKE[qp.dtype], B, L, A, values.shape[2], qp.data_ptr(), kp.data_ptr(),
            u.data_ptr(), values.data_ptr(), w.data_ptr(), d_out.data_ptr(), address(d_w),
            dqp.data_ptr(), dkp.data_ptr(), du.data_ptr(), address(dv),
        )  # fmt: skip
        wq, wk = (W_q, W_k) if W is None else (W[:, :H], W[:, H:])
        dkp, k2 = dkp.view(B * L, A), k.view(B * L, k.shape[2])
        dq = mm(dqp, wq) if needs[0] else None
        dk = mm(dkp, wk).view(k.shape) if needs[1] else None
        dW_q = mm(dqp.t(), q) if needs[5] else None
        dW_k = mm(dkp.t(), k2) if needs[6] else None
        dW = None
        if needs[7]:
            dW = W.new_empty(W.shape)
            dW[:, :H] = mm(dqp.t(), q)
            dW[:, H:] = mm(dkp.t(), k2)
        db = dqp.sum(0) if ctx.has_bias and needs[8] else None
        return dq, dk, dv, du if needs[3] else None, None, dW_q, dW_k, dW, db


def _additive_projections(q, k, W_q, W_k, W, b):
    B, L, K = k.shape
    k2 = k.view(B * L, K)
    if W is None:
        return mm(q, W_q.t()), mm(k2, W_k.t()).view(B, L, W_k.shape[0])
    H = q.shape[1]
    qp = mm(q, W[:, :H].t(), b)
    return qp, mm(k2, W[:, H:].t()).view(B, L, W.shape[0])


def _additive_forward(qp, kp, u, v, mask):
    B, L, A = kp.shape
    out, w = qp.new_empty((B, v.shape[2])), qp.new_empty((B, L))
    step_at.additive_forward_at(
        _LIKE[qp.dtype], B, L, A, v.shape[2], qp.data_ptr(), kp.data_ptr(), u.data_ptr(),
        v.data_ptr(), address(mask), out.data_ptr(), w.data_ptr(),
    )  # fmt: skip
    return out, w


def _one_query(query, keys, values, mask):
    """The common checks of the one-query kernels: where they apply (CPU, no functorch
    transform, consistent shapes), the mask as contiguous bool (or None) and True;
    else ``(None, False)`` (the general path decides, with its errors)."""
    if (
        _cuda.on_gpu(query)
        or torch._C._are_functorch_transforms_active()
        or query.dim() != 2
        or keys.dim() != 3
        or values.dim() != 3
        or values.shape[:2] != keys.shape[:2]
        or query.shape[0] != keys.shape[0]
    ):
        return None, False
    if mask is not None:
        if mask.shape != keys.shape[:2] or not mask.is_cpu:
            return None, False
        mask = mask.bool().contiguous()
    return mask, True


def additive_attention(q, k, values, u, mask, W_q=None, W_k=None, W=None, b=None):
    """:class:`_ProjectedAdditive` where it applies (from ``W_q`` and ``W_k``, or from
    concat's ``W`` and ``b``), else None (the general path decides, with its errors)."""
    mask, ok = _one_query(q, k, values, mask)
    if not ok:
        return None
    (A, Hq), Hk = (W_q.shape if W is None else (W.shape[0], q.shape[1])), k.shape[2]
    wk_shape = (A, Hk) if W is None else (A, Hq + Hk)
    if (
        q.shape[1] != Hq
        or (W_k if W is None else W).shape != wk_shape
        or u.shape not in ((A,), (1, A))  # (1, A): a Linear(A, 1)'s weight, no view node
        or (b is not None and b.shape != (A,))
    ):
        return None
    q, k, values, u = q.contiguous(), k.contiguous(), values.contiguous(), u.contiguous()
    tensors = (q, k, values, u, mask, W_q, W_k, W, b)
    if needs_grad(tensors):
        return _APPLY[_ProjectedAdditive](*tensors)
    qp, kp = _additive_projections(q, k, W_q, W_k, W, b)
    return _additive_forward(qp, kp, u, values, mask)


class _TutorialAttn(torch.autograd.Function):
    """The seq2seq tutorial's ``Attn`` on the CPU: one
    :mod:`fastrnn.attention.step_at` kernel call forward (both linear layers, the
    softmax, the weighted sum), one backward (every gradient). ``Q`` (1, B, Qn) and
    ``K`` (1, B, Kn) are read as (B, ·): the same memory, no views."""

    @staticmethod
    def forward(ctx, Q, K, V, wa, ba, wc, bc):
        out, w, app = _tutorial_forward(Q, K, V, wa, ba, wc, bc)
        ctx.save_for_backward(Q, K, V, wa, wc, w, app)
        return out, w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_w):
        Q, K, V, wa, wc, w, app = ctx.saved_tensors
        (B, L, Vn), O = V.shape, wc.shape[0]
        d_out = Q.new_zeros((1, B, O)) if d_out is None else d_out.contiguous()
        d_w = None if d_w is None else d_w.contiguous()
        grads = [torch.empty_like(t) for t in (Q, K, V, wa)]
        grads += [wa.new_empty(L), torch.empty_like(wc), wc.new_empty(O)]
        scratch = Q.new_empty(L + Vn)
        step_at.tutorial_backward_at(
            _LIKE[Q.dtype], B, Q.shape[2], K.shape[2], L, Vn, O,
            *(t.data_ptr() for t in (Q, K, V, wa, wc, w)), app.data_ptr(),
            d_out.data_ptr(), address(d_w), *(g.data_ptr() for g in grads),
            scratch.data_ptr(),
        )  # fmt: skip
        return tuple(g if n else None for g, n in zip(grads, ctx.needs_input_grad))


def _tutorial_forward(Q, K, V, wa, ba, wc, bc):
    (B, L, Vn), O = V.shape, wc.shape[0]
    out, w, app = Q.new_empty((1, B, O)), Q.new_empty((B, L)), Q.new_empty((B, Vn))
    step_at.tutorial_forward_at(
        _LIKE[Q.dtype], B, Q.shape[2], K.shape[2], L, Vn, O,
        *(t.data_ptr() for t in (Q, K, V, wa, ba, wc, bc, out, w, app)),
    )  # fmt: skip
    return out, w, app


def tutorial_attn(Q, K, V, wa, ba, wc, bc):
    """``(output, weights)`` of :class:`_TutorialAttn` for ``Q`` (1, B, Qn), ``K`` (1, B,
    Kn), ``V`` (B, L, Vn) and the two layers' parameters, where it applies (CPU, no
    functorch transform, the shapes of the module, biases present); else None."""
    if (
        _cuda.on_gpu(Q)
        or torch._C._are_functorch_transforms_active()
        or ba is None
        or bc is None
        or Q.dim() != 3
        or K.dim() != 3
        or V.dim() != 3
    ):
        return None
    (one, B, Qn), (L, Vn) = Q.shape, V.shape[1:]
    if (
        one != 1
        or K.shape[:2] != (1, B)
        or V.shape[0] != B
        or wa.shape != (L, Qn + K.shape[2])
        or ba.shape != (L,)
        or wc.dim() != 2
        or wc.shape[1] != Qn + Vn
        or bc.shape != (wc.shape[0],)
    ):
        return None
    tensors = [t.contiguous() for t in (Q, K, V, wa, ba, wc, bc)]
    if needs_grad(tensors):
        return _APPLY[_TutorialAttn](*tensors)
    return _tutorial_forward(*tensors)[:2]


class _FusedSDPA(torch.autograd.Function):
    """``scaled_dot_product_attention`` without a mask on same-shaped CPU tensors: one
    :mod:`fastrnn.attention.sdpa_panels` kernel call forward and one backward
    (recomputing the probabilities from the forward's row statistics)."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        out, stats, probs = _fused_forward(q, k, v, causal, scale, True)
        ctx.save_for_backward(q, k, v, out, stats, probs)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        q, k, v, out, stats, probs = ctx.saved_tensors
        *_, Lq, D = q.shape
        Lk, Dv = v.shape[-2:]
        d_out = d_out.contiguous()
        grads = [torch.empty_like(t) for t in (q, k, v)]
        like = _LIKE[q.dtype]
        W = panel_width(like.dtype)
        sdpa_panels.backward_panels(
            like, W, stats.numel() // (2 * Lq), Lq, Lk, D, Dv,
            *(t.data_ptr() for t in (q, k, v, out, stats)), address(probs), d_out.data_ptr(),
            ctx.causal,
            like.dtype.type(ctx.scale), *(g.data_ptr() for g in grads),
            _scratch(sdpa_panels.backward_scratch(Lq, Lk, D, Dv, W), like),
        )  # fmt: skip
        return (*grads, None, None)


_SCRATCH = threading.local()


def _scratch(n, like):
    """The address of ``n`` elements of ``like``'s dtype: this thread's scratch memory
    for the attention kernels, kept between calls (a torch allocation per call cost
    2-4 us, a tenth of a short call), grown when a call needs more."""
    try:
        buffers = _SCRATCH.buffers
    except AttributeError:  # this thread's first call
        buffers = _SCRATCH.buffers = {}
    kept = buffers.get(type(like))  # (a dtype's ``name`` takes microseconds)
    if kept is None or kept[0].size < n:
        buf = np.empty(max(n, 1), like.dtype)
        kept = buffers[type(like)] = (buf, buf.ctypes.data)
    return kept[1]


def _fused_forward(q, k, v, causal, scale, keep):
    """``(out, stats, probs)``: with ``keep`` (for a backward) the row statistics as a
    tensor and, for short sequences, the probabilities (else None); without, both stay
    in scratch memory (None, None)."""
    *lead, Lq, D = q.shape
    Lk, Dv = v.shape[-2:]
    like = _LIKE[q.dtype]
    W = panel_width(like.dtype)
    N = q.numel() // (Lq * D)
    out = q.new_empty((*lead, Lq, Dv))
    work = sdpa_panels.forward_scratch(Lq, Lk, D, Dv, W)
    probs = None
    if keep:
        stats = q.new_empty((*lead, Lq, 2))
        stats_at, scratch = stats.data_ptr(), _scratch(work, like)
        if sdpa_panels.keeps_probabilities(Lq, Lk):
            probs = q.new_empty((*lead, Lq, Lk))
    else:
        stats, scratch = None, _scratch(work + 2 * N * Lq, like)
        stats_at = scratch + work * like.itemsize
    sdpa_panels.forward_panels(
        like, W, N, Lq, Lk, D, Dv, q.data_ptr(), k.data_ptr(), v.data_ptr(), causal,
        like.dtype.type(scale), out.data_ptr(), stats_at, address(probs), scratch,
    )  # fmt: skip
    return out, stats, probs


def fused_sdpa(q, k, v, causal, scale):
    """:class:`_FusedSDPA` of same-shaped CPU tensors (the caller checked them)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if needs_grad((q, k, v)):
        return _APPLY[_FusedSDPA](q, k, v, causal, scale)
    return _fused_forward(q, k, v, causal, scale, False)[0]


# Every caller above runs these only while no functorch transform is active (they return
# None under one, and the general path runs): torch's C++ ``apply`` directly.
_APPLY = {f: cpp_apply(f) for f in (_DotAttention, _ProjectedAdditive, _TutorialAttn, _FusedSDPA)}
