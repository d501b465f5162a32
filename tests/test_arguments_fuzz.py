"""Fuzzing the public API's arguments: wrong types, shapes, empty, NaN/inf, huge, negative.

Whatever the input, fastrnn either computes (finite input -> finite output of the
documented shape) or raises ValueError/TypeError with a message: never an IndexError,
KeyError, ZeroDivisionError, a Numba typing error, a crash or a silent wrong shape.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn

ALLOWED = (ValueError, TypeError)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 6),
    st.sampled_from([0, 1, 10**12, -(10**12)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.sampled_from([np.float32(2), np.int64(3), [2], (2,), {"a": 1}, object()]),
)


def _arrays(dtype=None):
    dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.complex64])
    return st.builds(
        lambda shape, dt, fill: np.full(shape, fill).astype(dt if dtype is None else dtype),
        st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
        dtypes,
        st.sampled_from([0.5, -1.0, np.nan, np.inf, 1e30]),
    )


def _expect_clean(call):
    try:
        return call()
    except ALLOWED as exc:
        assert str(exc), "an error without a message"
        return None


@settings(max_examples=200, deadline=None)
@given(
    cls=st.sampled_from([fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU]),
    input_size=SCALARS,
    hidden_size=SCALARS,
    num_layers=SCALARS,
    dropout=SCALARS,
    bias=st.booleans(),
    dtype=st.sampled_from(["float32", "float64", None, "int8", 3]),
)
def test_constructors(cls, input_size, hidden_size, num_layers, dropout, bias, dtype):
    model = _expect_clean(
        lambda: cls(
            input_size, hidden_size, num_layers=num_layers, dropout=dropout, bias=bias, dtype=dtype
        )
    )
    if model is not None:
        assert model.hidden_size == hidden_size and model.num_layers == num_layers


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["LSTM", "GRU", "RNN"]),
    x=_arrays(),
    hx=st.one_of(st.none(), _arrays()),
    lengths=st.one_of(st.none(), SCALARS, _arrays()),
    batch_first=st.booleans(),
)
def test_calls(kind, x, hx, lengths, batch_first):
    model = getattr(fastrnn, kind)(3, 4, batch_first=batch_first, seed=0)
    if kind == "LSTM" and hx is not None:
        hx = (hx, hx)
    out = _expect_clean(lambda: model(x, hx, lengths=lengths))
    if out is not None:
        y = out[0]
        assert y.dtype == np.float32 and y.shape[-1] == 4
        if np.all(np.isfinite(x)) and (
            hx is None or np.all(np.isfinite(hx[0] if kind == "LSTM" else hx))
        ):
            assert np.all(np.isfinite(y))
    train = _expect_clean(lambda: model.forward_train(x, hx, lengths=lengths))
    if train is not None:
        y, _, tape = train
        grads = _expect_clean(lambda: model.backward(tape, x if x.shape == y.shape else y))
        assert grads is None or grads.input.shape == np.shape(x)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["LSTM", "GRU"]),
    x=_arrays(),
    state=st.one_of(st.none(), _arrays()),
    batch=SCALARS,
)
def test_streaming(kind, x, state, batch):
    model = getattr(fastrnn, kind)(3, 4, seed=0)
    if kind == "LSTM" and state is not None:
        state = (state, state)
    out = _expect_clean(lambda: model.step(x, state))
    if out is not None:
        assert out[0].shape[-1] == 4
    init = _expect_clean(lambda: model.initial_state(batch))
    assert init is None or batch is None or isinstance(batch, (int, np.integer))


@settings(max_examples=150, deadline=None)
@given(
    q=_arrays(np.float32),
    k=_arrays(np.float32),
    v=_arrays(np.float32),
    mask=st.one_of(st.none(), _arrays()),
    causal=st.booleans(),
    scale=st.one_of(st.none(), st.floats(allow_nan=True)),
)
def test_attention(q, k, v, mask, causal, scale):
    out = _expect_clean(
        lambda: fastrnn.attention.scaled_dot_product(q, k, v, mask=mask, causal=causal, scale=scale)
    )
    if out is not None:
        assert out.shape[-1] == v.shape[-1]


@settings(max_examples=100, deadline=None)
@given(grads=st.lists(_arrays(), max_size=3), max_norm=SCALARS, norm_type=SCALARS)
def test_clip_grad_norm(grads, max_norm, norm_type):
    _expect_clean(lambda: fastrnn.clip_grad_norm(grads, max_norm, norm_type))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_state_dicts(kind):
    model = getattr(fastrnn, kind)(3, 4)
    good = model.state_dict()
    bad_values = [
        None,
        3,
        "w",
        np.zeros(0),
        np.full((12, 3), np.nan),
        np.zeros((4, 4, 4)),
        np.zeros((12, 3), np.complex64),
        np.zeros((12, 3), object),
    ]
    for value in bad_values:
        for name in good:
            sd = dict(good)
            sd[name] = value
            _expect_clean(lambda sd=sd: model.load_state_dict(sd))
