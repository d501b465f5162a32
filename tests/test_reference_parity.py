"""The kernels against the plain-NumPy reference (``fastrnn.reference``, the spec):
outputs, final states and every gradient, with no torch involved. The reference
itself is checked against torch.nn where torch is installed (``test_layers.py``,
``test_bptt.py``); this module is what proves the kernels in the core's torch-less run."""

import numpy as np
import pytest

import fastrnn

from .helpers import KINDS, flat_state, random_inputs, tolerance


def _model(kind, dtype, **kwargs):
    cls, _, extra = KINDS[kind]
    return cls(3, 5, dtype=dtype, seed=7, **extra, **kwargs)


def _reference_kwargs(m, lengths):
    return dict(
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        bidirectional=m.bidirectional,
        proj_size=m.proj_size,
        nonlinearity=m.nonlinearity,
        lengths=lengths,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("layout", ["uni", "bi"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_forward_and_gradients_match_the_reference(kind, layout, with_lengths, dtype, rng):
    m = _model(kind, dtype, num_layers=2, bidirectional=layout == "bi")
    x, hx, lengths = random_inputs(m, rng, (6, 3, 3), 3, dtype, True, with_lengths)
    y, state, tape = m.forward_train(x, hx, lengths=lengths)
    ry, rstate = fastrnn.reference.forward(
        m.mode, m.state_dict(), x, hx, **_reference_kwargs(m, lengths)
    )
    tol = tolerance(dtype)
    np.testing.assert_allclose(y, ry, rtol=0, atol=tol)
    for a, b in zip(flat_state(state), flat_state(rstate)):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gstate = tuple(rng.standard_normal(a.shape).astype(dtype) for a in flat_state(state))
    gstate = gstate if isinstance(state, tuple) else gstate[0]
    grads = m.backward(tape, gy, gstate)
    rx, rhx, rparams = fastrnn.reference.backward(
        m.mode, m.state_dict(), x, hx, gy, gstate, **_reference_kwargs(m, lengths)
    )
    pairs = [("input", grads.input, rx)]
    pairs += list(zip(("h0", "c0"), flat_state(grads.hx), flat_state(rhx)))
    pairs += [(name, grads.params[name], g) for name, g in rparams.items()]
    assert list(grads.params) == list(rparams)
    for name, ours, ref in pairs:
        scale = float(np.max(np.abs(ref))) if ref.size else 1.0
        err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
        assert err <= tolerance(dtype, scale, gradient=True), f"{name}: {err:.3g}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_wrong_gradient_is_caught(kind, rng):
    """The comparison above fails when a gradient is off by one part in a thousand."""
    m = _model(kind, "float64")
    x = rng.standard_normal((4, 2, 3))
    hx = m.initial_state(2)
    y, state, tape = m.forward_train(x, hx)
    grads = m.backward(tape, np.ones_like(y))
    zeros = tuple(np.zeros_like(a) for a in flat_state(state))
    _, _, rparams = fastrnn.reference.backward(
        m.mode, m.state_dict(), x, hx, np.ones_like(y),
        zeros if isinstance(state, tuple) else zeros[0], **_reference_kwargs(m, None),
    )  # fmt: skip
    name = "weight_hh_l0"
    off = grads.params[name] * 1.001
    scale = float(np.max(np.abs(rparams[name])))
    assert np.max(np.abs(off - rparams[name])) > tolerance("float64", scale, gradient=True)
