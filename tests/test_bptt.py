"""Backpropagation through time: every gradient equals torch autograd's."""

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn import engine
from fastrnn.engine import cpu, pieces

from .helpers import (
    CELLS,
    KINDS,
    assert_grad,
    check_grads,
    flat_state,
    make_pair,
    tensors,
    torch_grads,
)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_match_torch_grid(kind, num_layers, bidirectional, with_lengths, dtype, rng):
    check_grads(
        kind,
        dtype,
        rng,
        num_layers=num_layers,
        bidirectional=bidirectional,
        with_lengths=with_lengths,
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("variant", ["batch_first", "no_bias", "no_hx", "unbatched", "blas"])
def test_gradients_match_torch_options(kind, variant, rng):
    opts = {
        "batch_first": dict(batch_first=True, with_lengths=True, bidirectional=True),
        "no_bias": dict(bias=False, num_layers=2),
        "no_hx": dict(with_hx=False, with_lengths=True),
        "unbatched": dict(unbatched=True, num_layers=2, bidirectional=True),
        "blas": dict(
            B=engine.BLAS_MIN_BATCH + 1, num_layers=2, bidirectional=True, with_lengths=True
        ),
    }[variant]
    check_grads(kind, "float64", rng, **opts)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_match_torch_with_packed_tiles(kind, dtype, rng):
    # batch 1 over enough steps: the recurrent products run on packed tiles both ways
    # (``fastrnn.tiles``); H=20 leaves every gate matrix a partial last tile
    T = cpu.TILES_MIN_STEPS + 3
    check_grads(kind, dtype, rng, T=T, B=1, I=6, H=20, num_layers=2, bidirectional=True)
    check_grads(kind, dtype, rng, T=T, B=1, I=6, H=20, with_lengths=True, with_hx=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_match_torch_with_packed_panels(kind, dtype, rng):
    # more rows: the recurrent products run on packed panels both ways
    # (``fastrnn.tile_gemm``), a few rows over enough steps and a batch of
    # BLAS_MIN_PIECE rows or more (whose input projection is made step by step); H=20
    # leaves a partial last panel for GRU and RNN, B=3 and 33 partial blocks of rows
    T = cpu.TILES_MIN_STEPS + 1
    check_grads(kind, dtype, rng, T=T, B=3, I=6, H=20, num_layers=2, bidirectional=True)
    B = cpu.BLAS_MIN_PIECE + 1
    check_grads(kind, dtype, rng, T=4, B=B, I=6, H=20, num_layers=2, with_lengths=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_match_torch_on_every_backend(kind, dtype, rng, backend):
    """Outputs, states and every gradient on the CPU and on CUDA (arrays on the device)."""
    T, B, I, H = backend.sizes
    check_grads(
        kind, dtype, rng, T=T, B=B, I=I, H=H, num_layers=2, bidirectional=True,
        with_lengths=True, backend=backend,
    )  # fmt: skip


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("variant", ["batch_first", "no_bias", "no_hx", "unbatched"])
def test_options_match_torch_on_every_backend(kind, variant, rng, backend):
    opts = {
        "batch_first": dict(batch_first=True, with_lengths=True),
        "no_bias": dict(bias=False),
        "no_hx": dict(with_hx=False, num_layers=2),
        "unbatched": dict(unbatched=True, bidirectional=True),
    }[variant]
    T, B, I, H = backend.sizes
    check_grads(kind, "float64", rng, T=T, B=B, I=I, H=H, backend=backend, **opts)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reference_bptt_matches_torch_and_kernels(kind, rng):
    """The plain-NumPy BPTT agrees with torch (via the kernels, checked above) and the kernels."""
    m, tm = make_pair(kind, 3, 4, "float64", num_layers=2, bidirectional=True)
    x = rng.standard_normal((5, 3, 3))
    st = m.initial_state(3)
    hx = tuple(rng.standard_normal(a.shape) for a in flat_state(st))
    hx = hx if isinstance(st, tuple) else hx[0]
    lengths = np.array([5, 2, 4])
    y, state, tape = m.forward_train(x, hx, lengths=lengths)
    gy = rng.standard_normal(y.shape)
    gstate = tuple(rng.standard_normal(a.shape) for a in flat_state(state))
    gstate = gstate if isinstance(state, tuple) else gstate[0]
    grads = m.backward(tape, gy, gstate)
    rx, rhx, rparams = fastrnn.reference.backward(
        m.mode,
        m.state_dict(),
        x,
        hx,
        gy,
        gstate,
        hidden_size=4,
        num_layers=2,
        bidirectional=True,
        proj_size=m.proj_size,
        nonlinearity=m.nonlinearity,
        lengths=lengths,
    )
    assert_grad(grads.input, rx, "float64", "input vs reference")
    for a, b in zip(flat_state(grads.hx), flat_state(rhx)):
        assert_grad(a, b, "float64", "hx vs reference")
    for name, g in rparams.items():
        assert_grad(grads.params[name], g, "float64", f"{name} vs reference")
    tgx, _ = torch_grads(tm, x, hx, lengths, False, gy, flat_state(gstate))
    assert_grad(rx, tgx, "float64", "reference input vs torch")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_gradients_match_torch(kind, dtype, rng):
    cell, tcell = make_pair(kind, 4, 5, dtype, table=CELLS)
    x = rng.standard_normal((3, 4)).astype(dtype)
    h = rng.standard_normal((3, 5)).astype(dtype)
    gh_out = rng.standard_normal((3, 5)).astype(dtype)
    xt, ht = tensors(x), tensors(h)
    if kind == "lstm":
        c = rng.standard_normal((3, 5)).astype(dtype)
        gc_out = rng.standard_normal((3, 5)).astype(dtype)
        h1, c1, tape = cell.forward_train(x, (h, c))
        gx, (gh, gc), gp = cell.backward(tape, gh_out, gc_out)
        ct = tensors(c)
        th, tc = tcell(xt, (ht, ct))
        ((th * torch.from_numpy(gh_out)).sum() + (tc * torch.from_numpy(gc_out)).sum()).backward()
        assert_grad(h1, th, dtype, "h'")
        assert_grad(c1, tc, dtype, "c'")
        assert_grad(gc, ct.grad, dtype, "c")
    else:
        h1, tape = cell.forward_train(x, h)
        gx, gh, gp = cell.backward(tape, gh_out)
        th = tcell(xt, ht)
        (th * torch.from_numpy(gh_out)).sum().backward()
        assert_grad(h1, th, dtype, "h'")
    assert_grad(gx, xt.grad, dtype, "x")
    assert_grad(gh, ht.grad, dtype, "h")
    for name, p in tcell.named_parameters():
        assert_grad(gp[name], p.grad, dtype, name)


def test_unbatched_cell_backward(rng):
    cell, tcell = make_pair("gru", 4, 5, "float64", table=CELLS)
    x, h = rng.standard_normal(4), rng.standard_normal(5)
    h1, tape = cell.forward_train(x, h)
    gx, gh, _ = cell.backward(tape, np.ones(5))
    xt, ht = tensors(x), tensors(h)
    tcell(xt, ht).sum().backward()
    assert_grad(gx, xt.grad, "float64", "x")
    assert_grad(gh, ht.grad, "float64", "h")


class _TorchStack(torch.nn.Module):
    """torch.nn layers run one at a time with given masks between them."""

    def __init__(self, tm, kind, masks):
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for layer in range(tm.num_layers):
            below = (2 if tm.bidirectional else 1) * (tm.proj_size or tm.hidden_size)
            one = type(tm)(
                tm.input_size if layer == 0 else below,
                tm.hidden_size,
                bidirectional=tm.bidirectional,
                bias=tm.bias,
                **({"proj_size": tm.proj_size} if kind.startswith("lstm") else {}),
                **({"nonlinearity": tm.nonlinearity} if kind.startswith("rnn") else {}),
            ).double()
            for name, p in one.named_parameters():
                p.data.copy_(getattr(tm, name.replace("_l0", f"_l{layer}")))
            self.layers.append(one)
        self.masks = [torch.from_numpy(mk) for mk in masks]

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x, _ = layer(x)
            if i < len(self.masks):
                x = x * self.masks[i]
        return x


# B=33 on two threads: the whole stack in two pieces of rows (fastrnn.engine.pieces)
@pytest.mark.parametrize("B, threads_", [(2, 1), (2 * pieces.STACK_MIN_PIECE + 1, 2)])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_dropout_with_supplied_masks_equals_torch(kind, B, threads_, rng, four_cpus):
    fastrnn.set_num_threads(threads_)
    m, tm = make_pair(kind, 3, 4, "float64", num_layers=3, bidirectional=True, dropout=0.4)
    x = rng.standard_normal((5, B, 3))
    F = 2 * m.output_size
    keep = [rng.random((5, B, F)) >= 0.4 for _ in range(2)]
    y, _, tape = m.forward_train(x, dropout_masks=keep)
    gy = rng.standard_normal(y.shape)
    grads = m.backward(tape, gy)
    stack = _TorchStack(tm, kind, [k / 0.6 for k in keep])
    xt = tensors(x)
    ty = stack(xt)
    (ty * torch.from_numpy(gy)).sum().backward()
    assert_grad(y, ty, "float64", "output")
    assert_grad(grads.input, xt.grad, "float64", "input")
    for layer, one in enumerate(stack.layers):
        for name, p in one.named_parameters():
            full = name.replace("_l0", f"_l{layer}")
            assert_grad(grads.params[full], p.grad, "float64", full)
    # Inference ignores dropout; masks drawn from an rng are 0 or 1/(1-p).
    np.testing.assert_allclose(
        m(x)[0], tm.eval()(torch.from_numpy(x))[0].detach().numpy(), atol=1e-12
    )
    _, _, tape = m.forward_train(x, rng=np.random.default_rng(0))
    assert set(np.unique(tape.masks[0])) <= {0.0, 1 / 0.6}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_finite_differences(kind):
    """Central differences in float64 on a tiny model: input, state and every parameter."""
    rng = np.random.default_rng(5)
    m, _ = make_pair(kind, 2, 4, "float64", num_layers=2, bidirectional=True)
    x = rng.standard_normal((3, 2, 2))
    st = m.initial_state(2)
    hx = tuple(rng.standard_normal(a.shape) for a in flat_state(st))
    hx = hx if isinstance(st, tuple) else hx[0]
    lengths = [3, 2]
    y, state, tape = m.forward_train(x, hx, lengths=lengths)
    wy = rng.standard_normal(y.shape)
    ws = tuple(rng.standard_normal(a.shape) for a in flat_state(state))

    def loss():
        y, state = m(x, hx, lengths=lengths)
        return float(np.sum(y * wy) + sum(np.sum(a * w) for a, w in zip(flat_state(state), ws)))

    grads = m.backward(tape, wy, ws if isinstance(state, tuple) else ws[0])
    targets = [("input", x, grads.input)]
    targets += [
        (f"hx{i}", a, g) for i, (a, g) in enumerate(zip(flat_state(hx), flat_state(grads.hx)))
    ]
    targets += [(n, p, grads.params[n]) for n, p in m.state_dict().items()]
    eps = 1e-6
    for name, arr, grad in targets:
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = loss()
            arr[idx] = old - eps
            down = loss()
            arr[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, atol=1e-7, rtol=1e-6, err_msg=name)


def _torch_clip(grads, max_norm, norm_type, **kwargs):
    params = [torch.nn.Parameter(torch.zeros(v.shape, dtype=torch.float64)) for v in grads]
    for p, v in zip(params, grads):
        p.grad = torch.from_numpy(v.copy())
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, **kwargs)
    return float(total), [p.grad.numpy() for p in params]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, float("inf"), float("-inf"), 0.0, -2.0])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
@pytest.mark.parametrize("special", ["none", "zero", "nan", "inf"])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, special, rng):
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    if special == "zero":
        grads[1][2] = 0.0
    elif special == "nan":
        grads[0][1, 1] = np.nan
    elif special == "inf":
        grads[1][0] = np.inf
    ttotal, tgrads = _torch_clip(grads, max_norm, norm_type)
    ours = [g.copy() for g in grads]
    total = fastrnn.clip_grad_norm(ours, max_norm, norm_type)
    np.testing.assert_allclose(total, ttotal, rtol=1e-12, equal_nan=True)
    for a, b in zip(ours, tgrads):
        np.testing.assert_allclose(a, b, rtol=1e-12, equal_nan=True)


def test_clip_grad_norm_error_if_nonfinite_and_bad_arguments(rng):
    grads = {"a": np.array([1.0, np.nan])}
    with pytest.raises(RuntimeError, match="non-finite"):
        fastrnn.clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        _torch_clip(list(grads.values()), 1.0, 2.0, error_if_nonfinite=True)
    assert np.isnan(grads["a"][0]) is np.False_  # untouched when it refuses
    with pytest.raises(ValueError, match="norm_type"):
        fastrnn.clip_grad_norm([np.ones(2)], 1.0, norm_type=float("nan"))
    with pytest.raises(TypeError, match="norm_type"):
        fastrnn.clip_grad_norm([np.ones(2)], 1.0, norm_type="fro")
    with pytest.raises(TypeError, match="floating-point ndarrays"):
        fastrnn.clip_grad_norm([[1.0, 2.0]], 1.0)


def test_backward_rejects_bad_input(rng):
    m = fastrnn.LSTM(3, 4, num_layers=2, dtype="float64", seed=0)
    x = rng.standard_normal((5, 2, 3))
    y, state, tape = m.forward_train(x)
    with pytest.raises(ValueError, match=r"grad_y must have shape \(5, 2, 4\); got \(5, 2, 3\)"):
        m.backward(tape, np.zeros((5, 2, 3)))
    with pytest.raises(TypeError, match="grad_y must have dtype float64"):
        m.backward(tape, np.zeros((5, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"grad_state\[1\] \(c_n\) must have shape \(2, 2, 4\)"):
        m.backward(tape, None, (np.zeros((2, 2, 4)), np.zeros((2, 3, 4))))
    other = fastrnn.LSTM(3, 4, num_layers=2, dtype="float64", seed=0)
    with pytest.raises(ValueError, match="tape was recorded by another model"):
        other.backward(tape, None)
    with pytest.raises(TypeError, match="tape must be the Tape"):
        m.backward({"not": "a tape"}, None)
    d = fastrnn.GRU(3, 4, num_layers=2, dropout=0.5, dtype="float64")
    with pytest.raises(ValueError, match=r"dropout_masks\[0\] must have shape \(5, 2, 4\)"):
        d.forward_train(x, dropout_masks=[np.ones((5, 2, 5))])
    with pytest.raises(ValueError, match="dropout_masks must hold num_layers - 1 = 1"):
        d.forward_train(x, dropout_masks=[])
    grads = m.backward(tape, None)  # None means zeros: every gradient is zero
    assert not np.any(grads.input) and not any(np.any(g) for g in grads.params.values())


def test_truncated_bptt_chunks_equal_full_sequence(rng):
    """Two chunks, the second's grads.hx fed back as the first's grad_state, equal one pass."""
    m = fastrnn.LSTM(3, 4, num_layers=2, dtype="float64", seed=1)
    x = rng.standard_normal((8, 2, 3))
    gy = rng.standard_normal((8, 2, 4))
    y, state, tape = m.forward_train(x)
    full = m.backward(tape, gy)
    y1, s1, t1 = m.forward_train(x[:5])
    y2, s2, t2 = m.forward_train(x[5:], s1)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y, atol=1e-14)
    g2 = m.backward(t2, gy[5:])
    g1 = m.backward(t1, gy[:5], g2.hx)
    np.testing.assert_allclose(np.concatenate([g1.input, g2.input]), full.input, atol=1e-12)
    for k in full.params:
        np.testing.assert_allclose(g1.params[k] + g2.params[k], full.params[k], atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_tape_owns_its_inputs(kind, rng):
    """Editing x or lengths after forward_train changes nothing in backward."""
    m, _ = make_pair(kind, 3, 5, "float64", num_layers=2)
    x = rng.standard_normal((6, 2, 3))
    lengths = np.array([6, 4])
    y, _, tape = m.forward_train(x, lengths=lengths)
    clean = m.backward(tape, np.ones_like(y))
    y, _, tape = m.forward_train(x, lengths=lengths)
    x *= 3.0
    lengths[1] = 1
    edited = m.backward(tape, np.ones_like(y))
    for name in clean.params:
        np.testing.assert_array_equal(edited.params[name], clean.params[name])
    np.testing.assert_array_equal(edited.input, clean.input)


def test_stale_tape_is_refused_after_load_state_dict(rng):
    m, tm = make_pair("lstm", 3, 5, "float64")
    y, _, tape = m.forward_train(rng.standard_normal((4, 2, 3)))
    m.load_state_dict(tm.state_dict())
    with pytest.raises(ValueError, match="load_state_dict"):
        m.backward(tape, np.ones_like(y))
    cell = fastrnn.GRUCell(3, 4, dtype="float64")
    h, tape = cell.forward_train(rng.standard_normal((2, 3)))
    cell.load_state_dict(cell.state_dict())
    with pytest.raises(ValueError, match="load_state_dict"):
        cell.backward(tape, np.ones_like(h))
