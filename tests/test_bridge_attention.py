"""fastrnn_torch attention modules and function against torch formulations."""

import pytest
import torch
import torch.nn.functional as F

import fastrnn
import fastrnn_torch as frt
from fastrnn_torch import _cuda

from .bridge_helpers import grads_match
from .helpers import tolerance

SIMULATED = fastrnn.cuda.is_simulator()


def fused_calls(monkeypatch, function):
    """A list that grows by one per call of the fused autograd ``function`` (called
    through ``_step_attention._APPLY``) for the rest of the test."""
    from fastrnn_torch import _step_attention

    calls, apply = [], _step_attention._APPLY[function]
    monkeypatch.setitem(_step_attention._APPLY, function, lambda *a: calls.append(1) or apply(*a))
    return calls


@pytest.fixture(params=["cpu", "cuda"])
def path(request, monkeypatch):
    """The CPU kernels, or the CUDA ones: under Numba's CUDA simulator CPU tensors are
    routed to the CUDA path (through ``__cuda_array_interface__`` views of their memory,
    as CUDA tensors on a GPU), and the test then checks that fastrnn's kernels ran."""
    if request.param == "cpu":
        yield "cpu"
        return
    if not SIMULATED:
        pytest.skip("CPU tensors reach the CUDA path only under the simulator")
    launches = request.getfixturevalue("cuda_launches")
    request.getfixturevalue("fast_simulator")
    monkeypatch.setattr(_cuda, "on_gpu", lambda x: True)
    yield "cuda"
    assert launches, "no fastrnn.cuda kernel ran"


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


def test_sdpa_float32_and_fallback(path):
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
def test_attn_module_is_the_tutorial(B, path):
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


def test_additive_module(tmp_path, path):
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
def test_luong_module(method, path):
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


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"mask": "bool"}, {"mask": "float"}])
def test_sdpa_through_cuda_matches_torch(kw, path):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 4, 3, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 5, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 5, 2, generator=g, dtype=torch.float64)
    kw = dict(kw)
    mask = kw.pop("mask", None)
    if mask == "bool":
        kw["attn_mask"] = torch.rand(2, 2, 4, 5, generator=g) > 0.4
        kw["attn_mask"][:, :, 2] = False
    elif mask == "float":
        kw["attn_mask"] = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64)
    grads_match(
        lambda *a: frt.scaled_dot_product_attention(*a, **kw),
        lambda *a: F.scaled_dot_product_attention(*a, **kw),
        [q, k, v],
    )


@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_plain_and_broadcast_paths_agree_with_torch(is_causal):
    """Same-shaped batches take the plain path (torch's products around fastrnn's softmax
    kernels), broadcast ones the general path: both match torch, gradients included,
    and Lq != Lk with causal (top-left aligned, as torch)."""
    g = torch.Generator().manual_seed(7)
    k = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64)
    for lead in ((2, 3), (1, 3)):  # plain, then broadcast over the batch
        q = torch.randn(*lead, 4, 4, generator=g, dtype=torch.float64)
        grads_match(
            lambda *a: frt.scaled_dot_product_attention(*a, is_causal=is_causal),
            lambda *a: F.scaled_dot_product_attention(*a, is_causal=is_causal),
            [q, k, v],
        )


@pytest.mark.parametrize("Lk", [70, 90])
def test_sdpa_causal_with_more_keys_than_queries_matches_torch(Lk):
    """Causal attention is top-left aligned, as torch's: with more keys than queries the
    extra keys get no weight (the plain path, gradients included)."""
    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, 70, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, Lk, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, Lk, 3, generator=g, dtype=torch.float64)
    grads_match(
        lambda *a: frt.scaled_dot_product_attention(*a, is_causal=True),
        lambda *a: F.scaled_dot_product_attention(*a, is_causal=True),
        [q, k, v],
    )


@pytest.mark.parametrize("kind", ["dot", "general", "concat", "additive"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_query_kernels_with_masks(kind, dtype, monkeypatch):
    """Luong and additive attention on CPU tensors run one fused kernel each way
    (``fastrnn_torch._step_attention``): against torch's formula with a mask, a row
    whose keys are all masked (zeros, zero gradients), values wider than the keys,
    every input and parameter gradient (``general``'s bias included: its gradient is
    zero up to rounding, as in torch's formula), and without autograd."""
    from fastrnn_torch import _step_attention

    torch.manual_seed(1)
    if kind == "additive":
        ours, ref = frt.AdditiveAttention(6, 6, 5).to(dtype), frt.AdditiveAttention(6, 6, 5)
    else:
        ours, ref = frt.LuongAttention(6, kind).to(dtype), frt.LuongAttention(6, kind)
    ref = ref.to(dtype)
    ref.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 6, generator=g, dtype=dtype)
    k = torch.randn(3, 7, 6, generator=g, dtype=dtype)
    v = torch.randn(3, 7, 9, generator=g, dtype=dtype)
    mask = torch.rand(3, 7, generator=g) > 0.3
    mask[1] = False  # every key masked
    mask[0, 0] = True

    def torch_formula(q, k, v):
        if kind == "additive":
            scores = ref.v(torch.tanh(ref.W_q(q)[:, None] + ref.W_k(k)))[..., 0]
        else:
            scores = ref._torch_scores(q, k)
        w = torch.nan_to_num(torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1))
        return torch.bmm(w[:, None], v)[:, 0], w

    fn = (
        _step_attention._ProjectedAdditive
        if kind in ("concat", "additive")
        else (_step_attention._DotAttention)
    )
    calls = fused_calls(monkeypatch, fn)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    grads_match(
        lambda q, k, v: ours(q, k, v, mask), torch_formula, [q, k, v],
        params=[(ours, ref)], tol=tol,
    )  # fmt: skip
    assert calls, "the fused path did not run"
    with torch.no_grad():
        got, want = ours(q, k, v, mask), torch_formula(q, k, v)
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_attn_one_kernel_path(dtype, monkeypatch):
    """The tutorial's ``Attn`` on CPU tensors runs one fused kernel each way
    (``_TutorialAttn``), at sizes that tell every dimension apart, against torch's
    formula: outputs, every input and parameter gradient, and without autograd."""
    from fastrnn_torch import _step_attention

    torch.manual_seed(3)
    ours = frt.Attn(5, 3, 7, 4, 6).to(dtype)
    ref = frt.Attn(5, 3, 7, 4, 6).to(dtype)
    ref.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(6)
    Q = torch.randn(1, 2, 5, generator=g, dtype=dtype)
    K = torch.randn(1, 2, 3, generator=g, dtype=dtype)
    V = torch.randn(2, 7, 4, generator=g, dtype=dtype)
    calls = fused_calls(monkeypatch, _step_attention._TutorialAttn)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    grads_match(ours, ref._torch_forward, [Q, K, V], params=[(ours, ref)], tol=tol)
    assert calls, "the fused path did not run"
    with torch.no_grad():
        for a, b in zip(ours(Q, K, V), ref._torch_forward(Q, K, V)):
            assert a.shape == b.shape and (a - b).abs().max() <= tol


@pytest.mark.parametrize("sizes", [(4, 6), (6, 4), (16, 16), (40, 40), (37, 300), (300, 20)])
@pytest.mark.parametrize("features", [(8, 5), (32, 16)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("panel_scores", [None, 0])
def test_sdpa_without_mask_one_kernel(sizes, features, is_causal, dtype, panel_scores, monkeypatch):
    """Without a mask, same-shaped sequences run one kernel each way on packed panels
    (feature counts a whole number of panels read in place, others packed; sums past
    one panel's depth; causal with more queries than keys and more keys than queries),
    and above ``PANEL_SCORES`` torch's products around fastrnn's softmax: both against
    torch, every gradient, and without autograd."""
    from fastrnn.attention import sdpa_panels
    from fastrnn_torch import _step_attention

    if panel_scores is not None:
        monkeypatch.setattr(sdpa_panels, "PANEL_SCORES", panel_scores)
    Lq, Lk = sizes
    d, dv = features
    g = torch.Generator().manual_seed(9)
    q = torch.randn(2, 3, Lq, d, generator=g, dtype=dtype)
    k = torch.randn(2, 3, Lk, d, generator=g, dtype=dtype)
    v = torch.randn(2, 3, Lk, dv, generator=g, dtype=dtype)
    calls = fused_calls(monkeypatch, _step_attention._FusedSDPA)
    # the bound on rounding grows with the longest sum (over d, Lk or Lq)
    tol = tolerance(str(dtype).removeprefix("torch."), magnitude=max(Lq, Lk, d) / 64)
    grads_match(
        lambda *a: frt.scaled_dot_product_attention(*a, is_causal=is_causal),
        lambda *a: F.scaled_dot_product_attention(*a, is_causal=is_causal),
        [q, k, v],
        tol=tol,
    )
    assert bool(calls) == (Lq * Lk <= sdpa_panels.PANEL_SCORES)
    with torch.no_grad():
        got = frt.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        want = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    assert (got - want).abs().max() <= tol
