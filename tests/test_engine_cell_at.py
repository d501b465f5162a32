"""engine.CellAt (one step over memory given by address) against the reference's cell
equations and their hand-written backward, every output and gradient, without torch."""

import numpy as np
import pytest

from fastrnn import engine, reference

CASES = [("LSTM", "tanh"), ("GRU", "tanh"), ("RNN", "tanh"), ("RNN", "relu")]


def _address(a):
    return 0 if a is None else a.ctypes.data


@pytest.mark.parametrize("cell, nonlinearity", CASES)
@pytest.mark.parametrize("bias", [True, False])
# row loops (1, 3 rows), then panels (recurrence.CELL_PANEL_ROWS): weights packed, and
# read in place (input and hidden sizes whole panels)
@pytest.mark.parametrize("batch, I, H", [(1, 4, 5), (3, 4, 5), (70, 4, 5), (19, 32, 16)])
@pytest.mark.parametrize("given", [False, True], ids=["products", "given-products"])
def test_cell_at_matches_reference(cell, nonlinearity, bias, batch, I, H, given):
    """With ``given`` the caller computes the products (as the bridge does with BLAS
    for larger weights) and hands them in, and takes the gate gradients out."""
    B = batch
    spec = engine.Spec(cell, I, H, bias=bias, nonlinearity=nonlinearity, dtype=np.dtype("f8"))
    at = engine.cell_at(spec)
    rng = np.random.default_rng(0)
    G = spec.gates * H
    w_ih, w_hh = rng.standard_normal((G, I)), rng.standard_normal((G, H))
    b_ih, b_hh = (rng.standard_normal(G), rng.standard_normal(G)) if bias else (None, None)
    x, h0 = rng.standard_normal((B, I)), rng.standard_normal((B, H))
    lstm = cell == "LSTM"
    c0 = rng.standard_normal((B, H)) if lstm else None
    h1, gates = np.empty((B, H)), np.empty((B, at.tape_width))
    c1 = np.empty((B, H)) if lstm else None
    inputs = [_address(a) for a in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)]
    if given:
        gx, gh = x @ w_ih.T, h0 @ w_hh.T
        at.forward(
            B, inputs[0], inputs[1], inputs[2], 0, 0, *inputs[5:], h1.ctypes.data,
            _address(c1), gates.ctypes.data, gx.ctypes.data, gh.ctypes.data,
        )  # fmt: skip
    else:
        at.forward(B, *inputs, h1.ctypes.data, _address(c1), gates.ctypes.data)

    zero = np.zeros(G)
    bi, bh = (b_ih, b_hh) if bias else (zero, zero)
    dh1, dc1 = rng.standard_normal((B, H)), rng.standard_normal((B, H)) if lstm else None
    if lstm:
        want_h, want_c = reference.lstm_cell(x, h0, c0, w_ih, w_hh, bi, bh)
        np.testing.assert_allclose(c1, want_c, rtol=0, atol=1e-13)
        dx, dh, dc, grads = reference.lstm_cell_backward(
            x, h0, c0, w_ih, w_hh, bi, bh, None, dh1, dc1
        )
    elif cell == "GRU":
        want_h = reference.gru_cell(x, h0, w_ih, w_hh, bi, bh)
        dx, dh, grads = reference.gru_cell_backward(x, h0, w_ih, w_hh, bi, bh, dh1)
    else:
        want_h = reference.rnn_cell(x, h0, w_ih, w_hh, bi, bh, nonlinearity)
        dx, dh, grads = reference.rnn_cell_backward(x, h0, w_ih, w_hh, bi, bh, dh1, nonlinearity)
    np.testing.assert_allclose(h1, want_h, rtol=0, atol=1e-13)

    out = {
        "dx": np.empty((B, I)),
        "dh": np.empty((B, H)),
        "dc": np.empty((B, H)) if lstm else None,
        "w_ih": np.empty((G, I)),
        "w_hh": np.empty((G, H)),
        "b_ih": np.empty(G) if bias else None,
        "b_hh": np.empty(G) if bias else None,
    }
    if given:
        dgx = np.empty((B, G))
        dgh = np.empty((B, G)) if spec.kernels.SEPARATE_DGH else dgx
        outputs = [0, out["dh"], out["dc"], 0, 0, out["b_ih"], out["b_hh"]]
        at.backward(
            B, gates.ctypes.data, *inputs[:3], 0, 0, dh1.ctypes.data, _address(dc1),
            *(a if isinstance(a, int) else _address(a) for a in outputs),
            dgx.ctypes.data, dgh.ctypes.data,
        )  # fmt: skip
        out["dx"][:] = dgx @ w_ih
        out["dh"] += dgh @ w_hh
        out["w_ih"][:] = dgx.T @ x
        out["w_hh"][:] = dgh.T @ h0
    else:
        at.backward(
            B, gates.ctypes.data, *inputs[:5], dh1.ctypes.data, _address(dc1),
            *(_address(a) for a in out.values()),
        )  # fmt: skip
    want = dict(grads, dx=dx, dh=dh, dc=dc if lstm else None)
    for name, got in out.items():
        if got is not None:
            scale = max(1.0, np.abs(want[name]).max())
            np.testing.assert_allclose(got, want[name], rtol=0, atol=1e-12 * scale, err_msg=name)


def test_cell_at_zero_incoming_gradient_and_outputs_not_wanted():
    """An address of 0 reads as a zero gradient, and outputs left at 0 are not written:
    the step's gradients are then all zero."""
    spec = engine.Spec("LSTM", 2, 3, dtype=np.dtype("f4"))
    at = engine.cell_at(spec)
    rng = np.random.default_rng(1)
    arrays = [
        rng.standard_normal(s).astype("f4") for s in ((1, 2), (1, 3), (1, 3), (12, 2), (12, 3))
    ]
    gates = np.empty((1, at.tape_width), "f4")
    h1, c1 = np.empty((1, 3), "f4"), np.empty((1, 3), "f4")
    addresses = [a.ctypes.data for a in arrays]
    at.forward(1, *addresses, 0, 0, h1.ctypes.data, c1.ctypes.data, gates.ctypes.data)
    dx, dw = np.full((1, 2), np.nan, "f4"), np.full((12, 2), np.nan, "f4")
    at.backward(
        1, gates.ctypes.data, *addresses, 0, 0, dx.ctypes.data, 0, 0, dw.ctypes.data, 0, 0, 0
    )
    assert not dx.any() and not dw.any()
