"""fastrnn.attention against torch: outputs and every gradient."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastrnn
from fastrnn import attention

from .helpers import TORCH_DTYPE, tolerance


def close(a, b, dtype, what):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape, f"{what}: {a.shape} vs {b.shape}"
    scale = max(1.0, float(np.abs(b).max())) if b.size else 1.0
    err = float(np.abs(a - b).max()) if a.size else 0.0
    # attention's float32 products run through BLAS in another summation order than torch's
    assert err <= tolerance(dtype, 2 * scale), f"{what}: {err:.3g}"


def leaves(*arrays):
    return [torch.from_numpy(np.array(a)).requires_grad_(True) for a in arrays]


MASKS = ["none", "bool_key_padding", "bool_full", "float", "causal", "fully_masked_row"]


def make_mask(kind, rng, batch, Lq, Lk, dtype):
    if kind == "none" or kind == "causal":
        return None
    if kind == "bool_key_padding":  # (B, 1, 1, Lk) broadcast over heads and queries
        lengths = rng.integers(1, Lk + 1, size=batch[0])
        return (np.arange(Lk) < lengths[:, None])[:, None, None, :]
    if kind == "float":
        return rng.standard_normal((Lq, Lk)).astype(dtype)
    m = rng.random(batch + (Lq, Lk)) > 0.3
    if kind == "fully_masked_row":
        m[..., 1, :] = False
    return m


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize(
    "shape",
    [((2, 3), 4, 6, 5, 7), ((3,), 5, 5, 4, 4), ((), 3, 8, 2, 3)],
    ids=["multihead", "batch", "unbatched"],
)
def test_scaled_dot_product_matches_torch(shape, mask_kind, dtype, rng, backend):
    attention = backend.wrap(fastrnn.attention)
    batch, Lq, Lk, d, dv = shape
    if mask_kind == "bool_key_padding" and not batch:
        pytest.skip("key padding needs a batch")
    if mask_kind == "bool_key_padding" and len(batch) == 1:
        batch = batch + (1,)
    q = rng.standard_normal(batch + (Lq, d)).astype(dtype)
    k = rng.standard_normal(batch + (Lk, d)).astype(dtype)
    v = rng.standard_normal(batch + (Lk, dv)).astype(dtype)
    mask = make_mask(mask_kind, rng, batch, Lq, Lk, dtype)
    causal = mask_kind == "causal"
    out, tape = attention.scaled_dot_product_train(q, k, v, mask, causal)
    np.testing.assert_array_equal(out, attention.scaled_dot_product(q, k, v, mask, causal))
    go = rng.standard_normal(out.shape).astype(dtype)
    dq, dk, dv_ = attention.scaled_dot_product_backward(tape, go)
    tq, tk, tv = leaves(q, k, v)
    tm = None if mask is None else torch.from_numpy(np.array(mask))
    to = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, is_causal=causal)
    (to * torch.from_numpy(go)).sum().backward()
    close(out, to, dtype, "out")
    for a, b, n in ((dq, tq.grad, "dq"), (dk, tk.grad, "dk"), (dv_, tv.grad, "dv")):
        close(a, b, dtype, n)
    if mask_kind == "fully_masked_row":
        assert not np.any(out[..., 1, :]) and not np.any(dq[..., 1, :])


def test_scaled_dot_product_broadcast_self_attention_and_scale(rng):
    x = rng.standard_normal((2, 5, 4))
    k = rng.standard_normal((1, 5, 4))  # broadcast over the batch
    out, tape = attention.scaled_dot_product_train(x, k, k, scale=0.3)
    dq, dk, dv = attention.scaled_dot_product_backward(tape, np.ones_like(out))
    tx, tk = leaves(x, k)
    to = F.scaled_dot_product_attention(tx, tk, tk, scale=0.3)
    to.sum().backward()
    close(out, to, "float64", "out")
    close(dq, tx.grad, "float64", "dq")
    close(dk + dv, tk.grad, "float64", "dk + dv (same tensor)")
    # self-attention: Q = K = V gets the summed gradient
    out, tape = attention.scaled_dot_product_train(x, x, x)
    g = sum(attention.scaled_dot_product_backward(tape, np.ones_like(out)))
    tx = leaves(x)[0]
    F.scaled_dot_product_attention(tx, tx, tx).sum().backward()
    close(g, tx.grad, "float64", "self-attention")


def test_large_inputs_do_not_overflow(rng, backend):
    attention = backend.wrap(fastrnn.attention)
    q = (rng.choice([-1e4, 1e4], size=(2, 4, 8))).astype(np.float32)
    out, tape = attention.scaled_dot_product_train(q, q, q)
    grads = attention.scaled_dot_product_backward(tape, np.ones_like(out))
    assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(g)) for g in grads)


def torch_additive(q, k, v, wq, wk, vv, mask, bias=None):
    a = (q @ wq.T)[:, None] + k @ wk.T
    if bias is not None:
        a = a + bias
    scores = torch.tanh(a) @ vv
    if mask is not None:
        scores = scores.masked_fill(~torch.from_numpy(mask), float("-inf"))
    w = torch.nan_to_num(torch.softmax(scores, dim=1))
    return torch.einsum("bl,blv->bv", w, v), w


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_additive_matches_torch(dtype, masked, rng, backend):
    attention = backend.wrap(fastrnn.attention)
    B, L, qs, ks, vs, H = 3, 5, 4, 6, 7, 8
    arrays = [
        rng.standard_normal(s).astype(dtype)
        for s in [(B, qs), (B, L, ks), (B, L, vs), (H, qs), (H, ks), (H,)]
    ]
    mask = None
    if masked:
        mask = np.arange(L) < np.array([5, 2, 0])[:, None]  # last row fully masked
    ctx, w, tape = attention.additive_train(*arrays, mask=mask)
    c2, w2 = attention.additive(*arrays, mask=mask)
    np.testing.assert_array_equal(ctx, c2)
    gc = rng.standard_normal(ctx.shape).astype(dtype)
    gw = rng.standard_normal(w.shape).astype(dtype)
    g = attention.additive_backward(tape, gc, gw)
    ts = leaves(*arrays)
    tc, tw = torch_additive(*ts, mask)
    ((tc * torch.from_numpy(gc)).sum() + (tw * torch.from_numpy(gw)).sum()).backward()
    close(ctx, tc, dtype, "context")
    close(w, tw, dtype, "weights")
    for name, t in zip(["query", "keys", "values", "W_q", "W_k", "v"], ts):
        close(g[name], t.grad, dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", ["dot", "general", "concat"])
def test_luong_matches_torch(method, dtype, rng, backend):
    attention = backend.wrap(fastrnn.attention)
    B, L, H = 3, 5, 6
    q = rng.standard_normal((B, H)).astype(dtype)
    k = rng.standard_normal((B, L, H)).astype(dtype)
    vals = rng.standard_normal((B, L, 4)).astype(dtype)
    mask = np.arange(L) < np.array([5, 3, 1])[:, None]
    params = {"dot": [], "general": [(H, H), (H,)], "concat": [(H, 2 * H), (H,), (H,)]}[method]
    params = [rng.standard_normal(s).astype(dtype) for s in params]
    ctx, w, tape = attention.luong_train(q, k, vals, method, params or None, mask)
    gc = rng.standard_normal(ctx.shape).astype(dtype)
    gw = rng.standard_normal(w.shape).astype(dtype)
    g = attention.luong_backward(tape, gc, gw)
    tq, tk, tv, *tp = leaves(q, k, vals, *params)
    if method == "dot":
        scores = torch.einsum("bh,blh->bl", tq, tk)
    elif method == "general":
        scores = torch.einsum("bh,blh->bl", tq, tk @ tp[0].T + tp[1])
    else:
        cat = torch.cat([tq[:, None].expand(-1, L, -1), tk], dim=2)
        scores = torch.tanh(cat @ tp[0].T + tp[1]) @ tp[2]
    scores = scores.masked_fill(~torch.from_numpy(mask), float("-inf"))
    tw = torch.softmax(scores, dim=1)
    tc = torch.einsum("bl,blv->bv", tw, tv)
    ((tc * torch.from_numpy(gc)).sum() + (tw * torch.from_numpy(gw)).sum()).backward()
    close(ctx, tc, dtype, "context")
    close(w, tw, dtype, "weights")
    for name, t in zip(["query", "keys", "values", "W", "b", "v"], [tq, tk, tv, *tp]):
        close(g[name], t.grad, dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B", [1, 3])
def test_concat_attn_matches_tutorial(B, dtype, rng, backend):
    attention = backend.wrap(fastrnn.attention)
    qs, ks, vs1, vs2, out = 5, 4, 6, 7, 3
    arrays = [
        rng.standard_normal(s).astype(dtype)
        for s in [
            (1, B, qs),
            (1, B, ks),
            (B, vs1, vs2),
            (vs1, qs + ks),
            (vs1,),
            (out, qs + vs2),
            (out,),
        ]
    ]
    o, w, tape = attention.concat_attn_train(*arrays)
    go = rng.standard_normal(o.shape).astype(dtype)
    g = attention.concat_attn_backward(tape, go)
    Q, K, V, Wa, ba, Wc, bc = ts = leaves(*arrays)
    tw = F.softmax(F.linear(torch.cat((Q[0], K[0]), 1), Wa, ba), dim=1)
    applied = torch.bmm(tw.unsqueeze(1), V)[:, 0]
    to = F.linear(torch.cat((Q[0], applied), 1), Wc, bc).unsqueeze(0)
    (to * torch.from_numpy(go)).sum().backward()
    close(o, to, dtype, "output")
    close(w, tw, dtype, "weights")
    for name, t in zip(["Q", "K", "V", "W_attn", "b_attn", "W_combine", "b_combine"], ts):
        close(g[name], t.grad, dtype, name)


def test_bad_input_is_reported(rng, backend):
    attention = backend.wrap(fastrnn.attention)
    q = rng.standard_normal((2, 3, 4))
    with pytest.raises(ValueError, match="query and key must have the same last dimension"):
        attention.scaled_dot_product(q, rng.standard_normal((2, 3, 5)), q)
    with pytest.raises(ValueError, match="key and value must have the same length"):
        attention.scaled_dot_product(q, q, rng.standard_normal((2, 4, 4)))
    with pytest.raises(ValueError, match=r"mask must be broadcastable to \(2, 3, 3\)"):
        attention.scaled_dot_product(q, q, q, mask=np.ones((4, 3), bool))
    with pytest.raises(TypeError, match="key must have dtype float64"):
        attention.scaled_dot_product(q, q.astype(np.float32), q)
    with pytest.raises(TypeError, match="mask must be bool"):
        attention.scaled_dot_product(q, q, q, mask=np.ones((3, 3), complex))
    with pytest.raises(ValueError, match=r"W_k must have shape \(8, 4\)"):
        attention.additive(q[:, 0], q, q, np.ones((8, 4)), np.ones((8, 5)), np.ones(8))
    with pytest.raises(ValueError, match="method must be"):
        attention.luong(q[:, 0], q, method="cosine")
    out, tape = attention.scaled_dot_product_train(q, q, q)
    with pytest.raises(ValueError, match=r"grad_out must have shape \(2, 3, 4\)"):
        attention.scaled_dot_product_backward(tape, np.ones((2, 3)))
    with pytest.raises(TypeError, match="tape must come from"):
        attention.additive_backward(tape, np.ones((2, 4)))
    assert TORCH_DTYPE


@pytest.mark.parametrize("scale", [1e4, 1e30, 1e37])
def test_additive_and_luong_concat_stay_finite_at_huge_float32_scores(scale, rng):
    """Scores near float32's range: softmax from the stored scores, as torch computes it."""
    B, L, qs, ks, vs, H = 2, 6, 4, 4, 3, 8
    q, k, val = (
        rng.standard_normal(s).astype(np.float32) for s in [(B, qs), (B, L, ks), (B, L, vs)]
    )
    wq, wk = (rng.standard_normal((H, s)).astype(np.float32) for s in (qs, ks))
    vv = (rng.standard_normal(H) * scale / H).astype(np.float32)
    ctx, w = attention.additive(q, k, val, wq, wk, vv)
    t = [torch.from_numpy(a) for a in (q, k, val, wq, wk, vv)]
    c_ref, w_ref = torch_additive(*t, None)
    assert np.all(np.isfinite(ctx)) and np.all(np.isfinite(w))
    np.testing.assert_allclose(w, w_ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(ctx, c_ref.numpy(), atol=1e-5)
    # Luong "concat" scores v · tanh(W [q; k] + b): the same kernel
    hidden = 4
    query, keys = (
        rng.standard_normal((B, hidden)).astype(np.float32),
        rng.standard_normal((B, L, hidden)).astype(np.float32),
    )
    W = rng.standard_normal((hidden, 2 * hidden)).astype(np.float32)
    b = np.zeros(hidden, np.float32)
    v = (rng.standard_normal(hidden) * scale / hidden).astype(np.float32)
    ctx, w = attention.luong(query, keys, method="concat", weights=(W, b, v))
    assert np.all(np.isfinite(ctx)) and np.all(np.isfinite(w))
    assert np.allclose(w.sum(axis=1), 1, atol=1e-5)


@pytest.mark.skipif(
    not fastrnn.cuda.is_available(), reason="no CUDA device and the simulator is off"
)
def test_device_inputs_take_the_gpu_path(rng):
    from numba import cuda

    q = cuda.to_device(rng.standard_normal((2, 3, 4)))
    out, tape = attention.scaled_dot_product_train(q, q, q)
    assert fastrnn.cuda.is_device_array(out) and tape.saved["device"]
    grads = attention.scaled_dot_product_backward(tape, cuda.to_device(np.ones((2, 3, 4))))
    assert all(fastrnn.cuda.is_device_array(g) for g in grads)
    with pytest.raises(ValueError, match="same leading dimensions"):
        attention.scaled_dot_product(q, cuda.to_device(rng.standard_normal((1, 3, 4))), q)
    with pytest.raises(TypeError, match="key must have dtype float64 .like query."):
        attention.scaled_dot_product(q, cuda.to_device(np.zeros((2, 3, 4), np.float32)), q)
