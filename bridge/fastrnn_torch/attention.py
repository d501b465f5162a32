"""Attention for PyTorch, computed by ``fastrnn.attention``'s kernels.

* :func:`scaled_dot_product_attention` — same semantics as
  ``torch.nn.functional.scaled_dot_product_attention`` (fully masked rows give 0);
* :class:`Attn` — drop-in for the seq2seq tutorial's ``Attn`` (submodules
  ``attn`` and ``attn_combine``);
* :class:`AdditiveAttention` (Bahdanau) and :class:`LuongAttention`
  (``dot``/``general``/``concat``, as in PyTorch's chatbot tutorial).

Each runs as a ``torch.autograd.Function`` over the core's ``*_train`` /
``*_backward`` pair for float32/float64 tensors: CPU tensors on the NumPy
kernels, CUDA tensors on ``fastrnn.cuda``'s (zero copies, torch's stream);
anything else (half precision, attention dropout) uses the plain torch formula.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from fastrnn import attention as core
from fastrnn.attention import sdpa as core_sdpa
from fastrnn.attention import sdpa_panels as core_panels
from fastrnn.linalg import use_gemm

from . import _cuda
from ._ops import needs_grad, torch_gemm
from ._step_attention import (
    additive_attention,
    dot_attention,
    fused_sdpa,
    tutorial_attn,
)

__all__ = ["scaled_dot_product_attention", "Attn", "AdditiveAttention", "LuongAttention"]


def _kernels_can_run(*tensors):
    ts = [t for t in tensors if t is not None]
    dtype = ts[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if all(t.is_cpu and t.dtype == dtype for t in ts):  # the common case, no device objects
        return True
    device = ts[0].device
    if not (device.type == "cuda" and _cuda.available()):
        return False
    return all(t.device == device and t.dtype == dtype for t in ts)


def _np(t):
    """The core's view of a tensor: a NumPy array, or a device array for CUDA tensors."""
    if t is None:
        return None
    return _cuda.device_array(t) if _cuda.on_gpu(t) else t.detach().numpy()


def _t(a, like):
    """A core result as a tensor on ``like``'s device (no copy)."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    return _cuda.as_tensor(a, like)


def _engine(x):
    """The context the core runs in: torch's stream and allocator for CUDA tensors,
    torch's matrix product for CPU tensors."""
    return _cuda.context(x) if _cuda.on_gpu(x) else use_gemm(torch_gemm)


class _CoreFunction(torch.autograd.Function):
    """Runs ``train(*arrays) -> (outputs, tape)`` forward and
    ``backward(tape, *grads) -> grads of the inputs`` backward."""

    @staticmethod
    def forward(ctx, train, backward, *tensors):
        x = tensors[0]
        with _engine(x):
            outputs, tape = train(*[_np(t) for t in tensors])
            ctx.tape, ctx.core_backward, ctx.like = tape, backward, x.new_empty(0)
            return tuple(_t(o, x) for o in outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        x = ctx.like
        with _engine(x):
            grads = ctx.core_backward(
                ctx.tape, *[None if g is None else _np(g.contiguous()) for g in grads]
            )
            return (None, None, *[_t(g, x) for g in grads])


def _run(train, backward, *tensors):
    if needs_grad(tensors):
        return _CoreFunction.apply(train, backward, *tensors)
    x = tensors[0]
    with torch.no_grad(), _engine(x):
        outputs, _ = train(*[_np(t) for t in tensors])
        return tuple(_t(o, x) for o in outputs)


# ----------------------------------------------------------------------------- functions


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None
):
    """``torch.nn.functional.scaled_dot_product_attention`` on fastrnn's kernels.

    ``attn_mask``: bool (True = attend) or float (added), broadcastable to
    (..., L, S). Rows with every key masked give zeros (and zero gradients).
    ``dropout_p > 0`` (and non-CPU tensors) run torch's own implementation.
    A float ``attn_mask`` gets no gradient.
    """
    if attn_mask is None and not dropout_p and _fused(query, key, value):  # the common call
        d = query.shape[-1]
        scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
        return fused_sdpa(query, key, value, bool(is_causal), scale)
    if dropout_p > 0 or not _kernels_can_run(query, key, value):
        return F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
        )
    if is_causal and attn_mask is not None:
        raise RuntimeError(
            "_scaled_dot_product_attention: Explicit attn_mask should not be "
            "set when is_causal=True"
        )
    if attn_mask is None and _plain(query, key, value):
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
        if needs_grad((query, key, value)):
            return _PlainSDPA.apply(query, key, value, bool(is_causal), scale)
        return _plain_forward(query, key, value, bool(is_causal), scale)[0]  # records nothing
    mask = _np(attn_mask)

    def train(q, k, v):
        out, tape = core.scaled_dot_product_train(q, k, v, mask, is_causal, scale)
        return (out,), tape

    def backward(tape, grad_out):
        return core.scaled_dot_product_backward(tape, grad_out)

    return _run(train, backward, query, key, value)[0]


def _fused(q, k, v):
    """Whether :func:`fused_sdpa` computes this call (checked in a few microseconds, a
    tenth of a short call): float32 or float64 CPU tensors of one dtype, slices as
    :func:`_slice_scores` takes them, at most ``PANEL_SCORES`` scores each."""
    dtype = q.dtype
    if not (
        (dtype is torch.float32 or dtype is torch.float64)
        and k.dtype is dtype
        and v.dtype is dtype
        and q.is_cpu
        and k.is_cpu
        and v.is_cpu
    ):
        return False
    return 0 < _slice_scores(q, k, v) <= core_panels.PANEL_SCORES


def _plain(q, k, v):
    """Whether :class:`_PlainSDPA` computes this call (its tensors on the CPU, of a dtype
    the kernels take): slices as :func:`_slice_scores` takes them, all their scores
    within ``BLOCK_ELEMS`` elements."""
    scores = _slice_scores(q, k, v)
    return 0 < scores and math.prod(q.shape[:-2]) * scores <= core_sdpa.BLOCK_ELEMS


def _slice_scores(q, k, v):
    """Scores per (batch, head) slice, ``Lq·Lk``, of a call without broadcasting: ``q``
    (..., Lq, d), ``k`` (..., Lk, d) and ``v`` (..., Lk, dv) of one leading shape, no
    size zero, on fastrnn's CPU kernels, no functorch transform; 0 for any other call
    (the general path checks and explains). Attribute reads only: a few microseconds."""
    qs, ks, vs = q.shape, k.shape, v.shape
    n = len(qs)
    if (
        n < 2
        or len(ks) != n
        or len(vs) != n
        or _cuda.on_gpu(q)  # (true of CPU tensors in tests of the CUDA path)
        or torch._C._are_functorch_transforms_active()
    ):
        return 0
    Lq, Lk, d = qs[-2], ks[-2], qs[-1]
    if ks[-1] != d or vs[-2] != Lk or ks[:-2] != qs[:-2] or vs[:-2] != qs[:-2]:
        return 0
    return Lq * Lk if d * vs[-1] else 0


def _rows(t):
    """``t`` (..., L, M) as the (N, L, M) NumPy view the core's row kernels take."""
    return t.detach().reshape(-1, t.shape[-2], t.shape[-1]).numpy()


def _plain_forward(q, k, v, causal, scale):
    """``(out, lse)``: the scores by torch's batched matmul, the (causal) softmax in
    place by fastrnn's kernel, then the probabilities times ``v``."""
    *lead, Lq, d = q.shape
    Lk, dv = v.shape[-2:]
    S = torch.bmm(q.reshape(-1, Lq, d), k.reshape(-1, Lk, d).transpose(1, 2))
    lse = torch.empty(S.shape[:2], dtype=S.dtype)
    core_sdpa.softmax_scores(S.numpy(), causal, scale, lse.numpy())
    out = torch.bmm(S, v.reshape(-1, Lk, dv))
    return out.view(*lead, Lq, dv), lse


class _PlainSDPA(torch.autograd.Function):
    """:func:`scaled_dot_product_attention` without a mask on same-shaped CPU tensors:
    torch's matrix products on the tensors themselves around fastrnn's softmax kernels
    (the general path's NumPy preparation cost more than the attention at L=16). The
    backward recomputes the probabilities from the saved log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        out, lse = _plain_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        *lead, Lq, d = q.shape
        Lk, dv = v.shape[-2:]
        q3, k3, v3 = q.reshape(-1, Lq, d), k.reshape(-1, Lk, d), v.reshape(-1, Lk, dv)
        do = grad_out.reshape(-1, Lq, dv).contiguous()
        P = torch.bmm(q3, k3.transpose(1, 2))
        core_sdpa.recompute_probs(P.numpy(), ctx.causal, ctx.scale, lse.numpy())
        dv = torch.bmm(P.transpose(1, 2), do)
        dS = torch.bmm(do, v3.transpose(1, 2))
        core_sdpa.score_gradients(P.numpy(), dS.numpy(), do.numpy(), _rows(out), ctx.scale)
        dq = torch.bmm(dS, k3).view(q.shape)
        dk = torch.bmm(dS.transpose(1, 2), q3).view(k.shape)
        return dq, dk, dv.view(v.shape), None, None


# ----------------------------------------------------------------------------- modules


def _linear(layer):
    """``(weight, bias)`` of a Linear, read from its ``_parameters`` (a parametrized
    one's through its properties)."""
    params = layer._parameters
    w, b = params.get("weight"), params.get("bias")
    if w is None:
        return layer.weight, layer.bias
    return w, b


class Attn(torch.nn.Module):
    """The seq2seq tutorial's ``Attn``: ``softmax(attn([Q, K])) · V`` then ``attn_combine``.

    ``forward(Q, K, V) -> (output, attn_weights)`` with Q (1, B, query_size),
    K (1, B, key_size), V (B, value_size1, value_size2); output (1, B, output_size),
    weights (B, value_size1). B = 1 is exactly the tutorial.
    """

    def __init__(self, query_size, key_size, value_size1, value_size2, output_size):
        super().__init__()
        self.query_size = query_size
        self.key_size = key_size
        self.value_size1 = value_size1
        self.value_size2 = value_size2
        self.output_size = output_size
        self.attn = torch.nn.Linear(query_size + key_size, value_size1)
        self.attn_combine = torch.nn.Linear(query_size + value_size2, output_size)

    def forward(self, Q, K, V):
        layers = self._modules  # (not ``self.attn``: Module.__getattr__, per call)
        params = (*_linear(layers["attn"]), *_linear(layers["attn_combine"]))
        if not _kernels_can_run(Q, K, V, *params):
            return self._torch_forward(Q, K, V)
        fused = tutorial_attn(Q, K, V, *params)
        if fused is not None:
            return fused

        def train(*arrays):
            out, w, tape = core.concat_attn_train(*arrays)
            return (out, w), tape

        def backward(tape, grad_out, grad_w):
            g = core.concat_attn_backward(tape, grad_out, grad_w)
            return tuple(
                g[n] for n in ("Q", "K", "V", "W_attn", "b_attn", "W_combine", "b_combine")
            )

        out, w = _run(train, backward, Q, K, V, *params)
        return out, w

    def _torch_forward(self, Q, K, V):
        w = F.softmax(self.attn(torch.cat((Q[0], K[0]), 1)), dim=1)
        applied = torch.bmm(w.unsqueeze(1), V)[:, 0]
        return self.attn_combine(torch.cat((Q[0], applied), 1)).unsqueeze(0), w


class AdditiveAttention(torch.nn.Module):
    """Bahdanau attention: ``score_j = v · tanh(W_q query + W_k keys_j)``.

    ``forward(query, keys, values, mask=None) -> (context, weights)``: query
    (B, query_size), keys (B, L, key_size), values (B, L, value_size), mask (B, L)
    bool (True = attend); context (B, value_size), weights (B, L).
    Submodules ``W_q``, ``W_k`` (Linear without bias) and ``v`` (Linear(hidden, 1)).
    """

    def __init__(self, query_size, key_size, hidden_size):
        super().__init__()
        self.W_q = torch.nn.Linear(query_size, hidden_size, bias=False)
        self.W_k = torch.nn.Linear(key_size, hidden_size, bias=False)
        self.v = torch.nn.Linear(hidden_size, 1, bias=False)

    def forward(self, query, keys, values, mask=None):
        params = (self.W_q.weight, self.W_k.weight, self.v.weight)
        if not _kernels_can_run(query, keys, values, *params):
            scores = self.v(torch.tanh(self.W_q(query)[:, None] + self.W_k(keys)))[..., 0]
            return _softmax_context(scores, values, mask)
        if query.dim() == 2 and keys.dim() == 3:  # one fused node, projections included
            fused = additive_attention(
                query, keys, values, self.v.weight, mask, self.W_q.weight, self.W_k.weight
            )
            if fused is not None:
                return fused
        m = _np(mask)

        def train(q, k, val, wq, wk, v):
            ctx, w, tape = core.additive_train(q, k, val, wq, wk, v[0], m)
            return (ctx, w), tape

        def backward(tape, grad_ctx, grad_w):
            g = core.additive_backward(tape, grad_ctx, grad_w)
            return g["query"], g["keys"], g["values"], g["W_q"], g["W_k"], g["v"][None]

        return _run(train, backward, query, keys, values, *params)


class LuongAttention(torch.nn.Module):
    """Luong attention as in PyTorch's chatbot tutorial.

    ``method="dot"``: ``q · k_j``; ``"general"``: ``q · attn(k_j)`` with
    ``attn = Linear(hidden, hidden)``; ``"concat"``: ``v · tanh(attn([q; k_j]))`` with
    ``attn = Linear(2 hidden, hidden)`` and a parameter ``v`` (hidden,).
    ``forward(query, keys, values=None, mask=None) -> (context, weights)`` with query
    (B, hidden), keys (B, L, hidden), values (B, L, value_size) defaulting to keys.
    """

    def __init__(self, hidden_size, method="dot"):
        super().__init__()
        if method not in ("dot", "general", "concat"):
            raise ValueError(f"method must be 'dot', 'general' or 'concat'; got {method!r}")
        self.method = method
        self.hidden_size = hidden_size
        if method == "general":
            self.attn = torch.nn.Linear(hidden_size, hidden_size)
        elif method == "concat":
            self.attn = torch.nn.Linear(2 * hidden_size, hidden_size)
            self.v = torch.nn.Parameter(
                torch.empty(hidden_size).uniform_(
                    -1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size)
                )
            )

    def _params(self):
        if self.method == "dot":
            return ()
        if self.method == "general":
            return self.attn.weight, self.attn.bias
        return self.attn.weight, self.attn.bias, self.v

    def forward(self, query, keys, values=None, mask=None):
        values = keys if values is None else values
        params = self._params()
        if not _kernels_can_run(query, keys, values, *params):
            return _softmax_context(self._torch_scores(query, keys), values, mask)
        fused = None
        if query.dim() != 2 or keys.dim() != 3:
            pass  # the general path's errors
        elif self.method == "dot":
            fused = dot_attention(query, keys, values, mask)
        elif self.method == "general":  # q · (W k_j + b) = (q W) · k_j + q · b
            W, b = self.attn.weight, self.attn.bias
            fused = dot_attention(query @ W, keys, values, mask, query @ b)
        elif keys.shape[2] == self.hidden_size:  # v · tanh(W_q q + b + W_k k_j)
            fused = additive_attention(
                query, keys, values, self.v, mask, W=self.attn.weight, b=self.attn.bias
            )
        if fused is not None:
            return fused
        m, method, n = _np(mask), self.method, len(params)

        def train(q, k, val, *ps):
            ctx, w, tape = core.luong_train(q, k, val, method, ps if ps else None, m)
            return (ctx, w), tape

        def backward(tape, grad_ctx, grad_w):
            g = core.luong_backward(tape, grad_ctx, grad_w)
            names = {0: (), 2: ("W", "b"), 3: ("W", "b", "v")}[n]
            return (g["query"], g["keys"], g["values"], *[g[x] for x in names])

        return _run(train, backward, query, keys, values, *params)

    def _torch_scores(self, query, keys):
        if self.method == "dot":
            return torch.sum(query[:, None] * keys, dim=2)
        if self.method == "general":
            return torch.sum(query[:, None] * self.attn(keys), dim=2)
        q = query[:, None].expand(-1, keys.shape[1], -1)
        return torch.sum(self.v * torch.tanh(self.attn(torch.cat((q, keys), 2))), dim=2)


def _softmax_context(scores, values, mask):
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), float("-inf"))
    w = torch.nan_to_num(F.softmax(scores, dim=1))
    return torch.bmm(w[:, None], values)[:, 0], w
