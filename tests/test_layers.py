"""Layer forward parity with torch.nn over a grid of configurations."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import engine, reference

from .helpers import (
    KINDS,
    TORCH_DTYPE,
    assert_close,
    compare,
    make_pair,
    tolerance,
    torch_forward,
)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_matches_torch_grid(kind, num_layers, bidirectional, with_lengths, dtype, rng):
    compare(
        kind,
        dtype,
        rng,
        num_layers=num_layers,
        bidirectional=bidirectional,
        with_lengths=with_lengths,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("variant", ["batch_first", "no_bias", "hx", "two_layers_all"])
def test_matches_torch_options(kind, variant, dtype, rng):
    opts = {
        "batch_first": dict(batch_first=True, with_lengths=True),
        "no_bias": dict(bias=False),
        "hx": dict(with_hx=True, with_lengths=True, bidirectional=True),
        "two_layers_all": dict(
            num_layers=2,
            bidirectional=True,
            batch_first=True,
            bias=False,
            with_hx=True,
            with_lengths=True,
        ),
    }[variant]
    compare(kind, dtype, rng, **opts)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_blas_path_matches_torch(kind, rng):
    """Batches of BLAS_MIN_BATCH rows or more take the np.dot recurrence."""
    compare(
        kind,
        "float64",
        rng,
        B=engine.BLAS_MIN_BATCH + 1,
        num_layers=2,
        bidirectional=True,
        with_hx=True,
        with_lengths=True,
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unbatched_matches_torch(kind, rng):
    m, tm = make_pair(kind, 4, 6, "float64", num_layers=2, bidirectional=True)
    x = rng.standard_normal((5, 4))
    st = m.initial_state()
    hx = (
        tuple(rng.standard_normal(a.shape) for a in st)
        if isinstance(st, tuple)
        else rng.standard_normal(st.shape)
    )
    y, state = m(x, hx)
    ty, tstate = torch_forward(tm, x, hx, None, False)
    assert_close(y, ty, "float64", "output")
    for a, b in zip(
        state if isinstance(state, tuple) else (state,),
        tstate if isinstance(tstate, tuple) else (tstate,),
    ):
        assert_close(a, b, "float64", "state")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reference_matches_torch_and_kernels(kind, rng):
    """The plain-NumPy reference agrees with torch.nn and with the fast kernels."""
    m, x, hx, lengths, y, state = compare(
        kind, "float64", rng, num_layers=2, bidirectional=True, with_hx=True, with_lengths=True
    )
    ry, rstate = reference.forward(
        m.mode,
        m.state_dict(),
        x,
        hx,
        hidden_size=m.hidden_size,
        num_layers=2,
        bidirectional=True,
        proj_size=m.proj_size,
        nonlinearity=m.nonlinearity,
        lengths=lengths,
    )
    assert_close(y, ry, "float64", "output vs reference")
    for a, b in zip(
        state if isinstance(state, tuple) else (state,),
        rstate if isinstance(rstate, tuple) else (rstate,),
    ):
        assert_close(a, b, "float64", "state vs reference")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_large_inputs_saturate(kind, rng):
    """Inputs of ±1e4 give finite results that still match torch."""
    for dtype in ("float32", "float64"):
        m, tm = make_pair(kind, 4, 6, dtype, num_layers=2)
        x = (rng.choice([-1e4, 1e4], size=(5, 2, 4))).astype(dtype)
        y, state = m(x)
        assert np.all(np.isfinite(y))
        ty, _ = torch_forward(tm, x, None, None, False)
        scale = float(np.abs(ty.numpy()).max())  # ReLU outputs reach about 4e3 here
        assert np.max(np.abs(y - ty.numpy())) <= tolerance(dtype, scale)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    T=st.integers(1, 6),
    B=st.integers(1, 5),
    I=st.integers(1, 5),
    H=st.integers(4, 7),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_torch(kind, T, B, I, H, seed):
    rng = np.random.default_rng(seed)
    compare(
        kind,
        "float64",
        rng,
        T=T,
        B=B,
        I=I,
        H=H,
        bidirectional=bool(seed % 2),
        with_lengths=bool(seed % 3),
        with_hx=bool(seed % 5),
    )


def test_init_is_torch_like_and_seeded():
    a = fastrnn.LSTM(3, 16, num_layers=2, seed=7)
    b = fastrnn.LSTM(3, 16, num_layers=2, seed=7)
    t = torch.nn.LSTM(3, 16, num_layers=2)
    assert list(a.state_dict()) == list(t.state_dict())
    for k, v in a.state_dict().items():
        assert v.dtype == np.float32 and v.shape == tuple(t.state_dict()[k].shape)
        np.testing.assert_array_equal(v, b.state_dict()[k])
        assert np.abs(v).max() <= 0.25 and np.abs(v).max() > 0.2
    assert TORCH_DTYPE


def test_state_dict_round_trips_into_torch(rng):
    m = fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, seed=0)
    tm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    y, _ = m(x)
    assert_close(y, tm(torch.from_numpy(x))[0], "float32", "output")


def test_repr_reads_like_torch():
    assert (
        repr(fastrnn.LSTM(3, 5, num_layers=2, proj_size=2))
        == "LSTM(3, 5, num_layers=2, proj_size=2, dtype='float32')"
    )
    assert (
        repr(fastrnn.RNN(3, 5, nonlinearity="relu"))
        == "RNN(3, 5, nonlinearity='relu', dtype='float32')"
    )


def test_whole_sequences_from_threads_equal_serial(rng):
    """Kernels release the GIL: concurrent calls on one model must not share scratch."""
    import threading

    m, _ = make_pair("gru", 4, 8, "float64", num_layers=2)
    xs = [rng.standard_normal((12, b, 4)) for b in (1, 2, 20, 3)]
    expected = [m(x)[0] for x in xs]
    got = [None] * len(xs)

    def run(i):
        for _ in range(5):
            got[i] = m(xs[i])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
