"""Backpropagation through time: every gradient equals torch autograd's."""

import numpy as np
import pytest
import torch
from conftest import CELLS, KINDS, TOL, make_pair
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn import layers

REL_TOL = {"float32": 1e-4, "float64": 1e-10}


def _tensors(a, requires_grad=True):
    if a is None:
        return None
    if isinstance(a, tuple):
        return tuple(_tensors(b, requires_grad) for b in a)
    return torch.from_numpy(np.array(a)).requires_grad_(requires_grad)


def _flat(a):
    return a if isinstance(a, tuple) else (a,)


def assert_grad(actual, expected, dtype, what):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    assert actual.shape == expected.shape, f"{what}: {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    err = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    assert err <= REL_TOL[dtype] * scale, f"{what}: error {err:.3g} (scale {scale:.3g})"


def torch_grads(tm, x, hx, lengths, batch_first, gy, gstate):
    """Run torch forward + backward with the given output/state gradients."""
    xt = _tensors(x)
    hxt = _tensors(hx)
    if lengths is None:
        y, state = tm(xt, hxt)
    else:
        T = x.shape[1] if batch_first else x.shape[0]
        packed = pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        y, state = tm(packed, hxt)
        y, _ = pad_packed_sequence(y, batch_first=batch_first, total_length=T)
    loss = (y * torch.from_numpy(gy)).sum()
    for s, g in zip(_flat(state), _flat(gstate)):
        loss = loss + (s * torch.from_numpy(g)).sum()
    loss.backward()
    return xt.grad, None if hxt is None else tuple(h.grad for h in _flat(hxt))


def check_grads(kind, dtype, rng, *, T=5, B=3, I=4, H=5, num_layers=1, bidirectional=False,
                batch_first=False, bias=True, with_hx=True, with_lengths=False, unbatched=False):
    m, tm = make_pair(kind, I, H, dtype, num_layers=num_layers, bidirectional=bidirectional,
                      batch_first=batch_first, bias=bias)
    tm = tm.to(torch.float64 if dtype == "float64" else torch.float32)
    if unbatched:
        shape, bsz = (T, I), None
    else:
        shape, bsz = ((B, T, I) if batch_first else (T, B, I)), B
    x = rng.standard_normal(shape).astype(dtype)
    hx = None
    st = m.initial_state(bsz)
    if with_hx:
        hx = tuple(rng.standard_normal(a.shape).astype(dtype) for a in _flat(st))
        hx = hx if isinstance(st, tuple) else hx[0]
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
    y, state, tape = m.forward_train(x, hx, lengths=lengths)
    y_ref, state_ref = m(x, hx, lengths=lengths)
    np.testing.assert_array_equal(y, y_ref)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gstate = tuple(rng.standard_normal(a.shape).astype(dtype) for a in _flat(state))
    grads = m.backward(tape, gy, gstate if isinstance(state, tuple) else gstate[0])
    tgx, thx = torch_grads(tm, x, hx, lengths, batch_first, gy, gstate)
    assert_grad(grads.input, tgx, dtype, "input")
    if hx is not None:
        for a, b, name in zip(_flat(grads.hx), thx, ("h0", "c0")):
            assert_grad(a, b, dtype, name)
    for name, p in tm.named_parameters():
        assert_grad(grads.params[name], p.grad, dtype, name)
    assert list(grads.params) == [n for n, _ in tm.named_parameters()]
    return m, grads


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_match_torch_grid(kind, num_layers, bidirectional, with_lengths, dtype, rng):
    check_grads(kind, dtype, rng, num_layers=num_layers, bidirectional=bidirectional,
                with_lengths=with_lengths)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("variant", ["batch_first", "no_bias", "no_hx", "unbatched", "blas"])
def test_gradients_match_torch_options(kind, variant, rng):
    opts = {"batch_first": dict(batch_first=True, with_lengths=True, bidirectional=True),
            "no_bias": dict(bias=False, num_layers=2),
            "no_hx": dict(with_hx=False, with_lengths=True),
            "unbatched": dict(unbatched=True, num_layers=2, bidirectional=True),
            "blas": dict(B=layers.BLAS_MIN_BATCH + 1, num_layers=2, bidirectional=True,
                         with_lengths=True)}[variant]
    check_grads(kind, "float64", rng, **opts)
