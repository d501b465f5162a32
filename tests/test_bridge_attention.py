"""fastrnn_torch attention modules and function against torch formulations."""

import pytest
import torch
import torch.nn.functional as F

import fastrnn_torch as frt


def grads_match(f_ours, f_ref, inputs, params=(), tol=1e-10):
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    ys = [x.detach().clone().requires_grad_(True) for x in inputs]
    out, ref = f_ours(*xs), f_ref(*ys)
    out, ref = (
        (out if isinstance(out, tuple) else (out,)),
        (ref if isinstance(ref, tuple) else (ref,)),
    )
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(r.shape, generator=g, dtype=r.dtype) for r in ref]
    for a, b in zip(out, ref):
        assert (a - b).abs().max() <= tol
    ours_params = [p for m in params for p in m[0].parameters()]
    ref_params = [p for m in params for p in m[1].parameters()]
    sum((a * w).sum() for a, w in zip(out, ws)).backward()
    sum((b * w).sum() for b, w in zip(ref, ws)).backward()
    for a, b in zip(xs + ours_params, ys + ref_params):
        assert (a.grad - b.grad).abs().max() <= tol


@pytest.mark.parametrize(
    "kw", [{}, {"is_causal": True}, {"mask": "bool"}, {"mask": "float"}, {"scale": 0.5}]
)
def test_sdpa_matches_torch_and_gradcheck(kw):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 4, 3, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 5, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 5, 2, generator=g, dtype=torch.float64)
    kw = dict(kw)
    if kw.get("mask") == "bool":
        kw["attn_mask"] = torch.rand(4, 5, generator=g) > 0.4
        kw["attn_mask"][2] = False
    elif kw.get("mask") == "float":
        kw["attn_mask"] = torch.randn(2, 1, 4, 5, generator=g, dtype=torch.float64)
    kw.pop("mask", None)
    grads_match(
        lambda *a: frt.scaled_dot_product_attention(*a, **kw),
        lambda *a: F.scaled_dot_product_attention(*a, **kw),
        [q, k, v],
    )
    assert torch.autograd.gradcheck(
        lambda *a: frt.scaled_dot_product_attention(*a, **kw),
        tuple(t.detach().requires_grad_(True) for t in (q, k, v)),
    )


def test_sdpa_float32_and_fallback():
    q = torch.randn(3, 6, 8)
    assert (
        frt.scaled_dot_product_attention(q, q, q) - F.scaled_dot_product_attention(q, q, q)
    ).abs().max() < 1e-5
    h = q.to(torch.bfloat16)
    assert frt.scaled_dot_product_attention(h, h, h).dtype == torch.bfloat16
    with torch.no_grad():
        out = frt.scaled_dot_product_attention(q, q, q)
    assert not out.requires_grad


@pytest.mark.parametrize("B", [1, 4])
def test_attn_module_is_the_tutorial(B):
    torch.manual_seed(0)
    ours = frt.Attn(32, 32, 32, 64, 32).double()
    g = torch.Generator().manual_seed(2)
    Q = torch.randn(1, B, 32, generator=g, dtype=torch.float64)
    K = torch.randn(1, B, 32, generator=g, dtype=torch.float64)
    V = torch.randn(B, 32, 64, generator=g, dtype=torch.float64)
    ref = frt.Attn(32, 32, 32, 64, 32).double()
    ref.load_state_dict(ours.state_dict())
    grads_match(ours, ref._torch_forward, [Q, K, V], params=[(ours, ref)])
    assert set(dict(ours.named_children())) == {"attn", "attn_combine"}


def test_additive_module(tmp_path):
    torch.manual_seed(0)
    ours = frt.AdditiveAttention(4, 6, 8).double()
    ref = frt.AdditiveAttention(4, 6, 8).double()
    ref.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 4, generator=g, dtype=torch.float64)
    k = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    v = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    mask = torch.arange(5) < torch.tensor([5, 2, 1])[:, None]

    def torch_formula(q, k, v):
        scores = ref.v(torch.tanh(ref.W_q(q)[:, None] + ref.W_k(k)))[..., 0]
        w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return torch.bmm(w[:, None], v)[:, 0], w

    grads_match(lambda q, k, v: ours(q, k, v, mask), torch_formula, [q, k, v], params=[(ours, ref)])


@pytest.mark.parametrize("method", ["dot", "general", "concat"])
def test_luong_module(method):
    torch.manual_seed(0)
    ours = frt.LuongAttention(6, method).double()
    ref = frt.LuongAttention(6, method).double()
    ref.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 6, generator=g, dtype=torch.float64)
    k = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)

    def torch_formula(q, k):
        w = torch.softmax(ref._torch_scores(q, k), dim=1)
        return torch.bmm(w[:, None], k)[:, 0], w

    grads_match(lambda q, k: ours(q, k), torch_formula, [q, k], params=[(ours, ref)])
