"""``fastrnn bench``'s attention rows: ``scaled_dot_product_attention`` (the ``SDPA``
rows) and a decoder step's attention layers (the ``Attn`` rows), fastrnn_torch against
torch on the same inputs and parameters."""

import torch
import torch.nn.functional as F

from .bench import Result, engine_times


def attention_workload(L, causal, backward, repeats):
    """``torch.nn.functional.scaled_dot_product_attention`` against fastrnn_torch's, B=8,
    4 heads, d=64: a forward under ``no_grad``, or forward + ``.sum().backward()``."""
    from .attention import scaled_dot_product_attention

    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(8, 4, L, 64, generator=g, requires_grad=backward) for _ in range(3)]

    def run(fn):
        def call():
            if not backward:
                with torch.no_grad():
                    return fn(*qkv, is_causal=causal)
            for t in qkv:
                t.grad = None
            fn(*qkv, is_causal=causal).sum().backward()
            return torch.cat([t.grad for t in qkv])

        return call

    ours, theirs = run(scaled_dot_product_attention), run(F.scaled_dot_product_attention)
    res = Result("SDPA", f"{'fwd+bwd' if backward else 'fwd'}{' causal' if causal else ''} L={L}")
    res.max_abs_diff["torch"] = float((ours() - theirs()).abs().max())
    res.times.update(engine_times({"fastrnn": ours, "torch": theirs}, repeats))
    return res


def attention_layer_thunks(kind, B, L=32, H=256):
    """A decoder step's attention layer, forward + backward: fastrnn_torch's module
    against the same layer written with torch ops (its ``_torch_*`` formula), same
    parameters. ``kind``: "Attn" (the seq2seq tutorial's, at its sizes (32, 32, 32, 64,
    32)), "additive", or a Luong method ("dot", "general", "concat"), with query (B, H)
    and keys and values (B, L, H). Returns engine -> a call returning the inputs'
    gradients."""
    from . import attention

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if kind == "Attn":
        m = attention.Attn(32, 32, 32, 64, 32)
        shapes, torch_layer = ((1, B, 32), (1, B, 32), (B, 32, 64)), m._torch_forward
    else:
        shapes = ((B, H), (B, L, H), (B, L, H))
        if kind == "additive":
            m = attention.AdditiveAttention(H, H, H)

            def torch_layer(q, k, v):
                scores = m.v(torch.tanh(m.W_q(q)[:, None] + m.W_k(k)))[..., 0]
                return attention._softmax_context(scores, v, None)

        else:
            m = attention.LuongAttention(H, kind)

            def torch_layer(q, k, v):
                return attention._softmax_context(m._torch_scores(q, k), v, None)

    xs = [torch.randn(s, generator=g, requires_grad=True) for s in shapes]

    def run(fn):
        def call():
            for t in [*xs, *m.parameters()]:
                t.grad = None
            out, w = fn(*xs)
            (out.sum() + w.sum()).backward()
            return torch.cat([t.grad.flatten() for t in xs])

        return call

    return {"fastrnn": run(m), "torch": run(torch_layer)}


def attention_layer_workload(kind, B, repeats):
    """The :func:`attention_layer_thunks` row of ``fastrnn bench``."""
    runs = attention_layer_thunks(kind, B)
    name = {"Attn": "tutorial", "additive": "additive"}.get(kind, "Luong " + kind)
    res = Result("Attn", f"{name} fwd+bwd B={B}")
    res.max_abs_diff["torch"] = float((runs["fastrnn"]() - runs["torch"]()).abs().max())
    res.times.update(engine_times(runs, repeats))
    return res
