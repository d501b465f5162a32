"""Shared helpers: build a fastrnn model and a torch.nn twin with the same weights.

CUDA tests run on Numba's CUDA simulator unless ``FASTRNN_TEST_GPU=1`` (``make
test-gpu``) asks for the real device; the choice has to be made before anything
imports ``numba.cuda``, hence here.
"""

import os
import sys

if os.environ.get("FASTRNN_TEST_GPU", "0") in ("", "0"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import fastrnn  # noqa: E402

torch.set_num_threads(1)

TOL = {"float32": 1e-5, "float64": 1e-10}

# (fastrnn class, torch class, extra constructor arguments), keyed by a test id.
KINDS = {
    "rnn_tanh": (fastrnn.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fastrnn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (fastrnn.LSTM, torch.nn.LSTM, {}),
    "lstm_proj": (fastrnn.LSTM, torch.nn.LSTM, {"proj_size": 3}),
    "gru": (fastrnn.GRU, torch.nn.GRU, {}),
}
CELLS = {
    "rnn_tanh": (fastrnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (fastrnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (fastrnn.LSTMCell, torch.nn.LSTMCell, {}),
    "gru": (fastrnn.GRUCell, torch.nn.GRUCell, {}),
}
TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}


def make_pair(kind, input_size, hidden_size, dtype, table=KINDS, **kwargs):
    """A torch module and the fastrnn model loaded from its state_dict."""
    ours, theirs, extra = table[kind]
    args = {**extra, **kwargs}
    tm = theirs(input_size, hidden_size, **args).to(TORCH_DTYPE[dtype])
    m = ours(input_size, hidden_size, dtype=dtype, **args)
    m.load_state_dict(tm.state_dict())
    return m, tm


def random_inputs(m, rng, shape, batch, dtype, with_hx, with_lengths):
    """``(x, hx, lengths)`` for model ``m``: random input of ``shape``, a random initial
    state (or None) and random lengths, the first one full (torch pads to the longest),
    or None."""
    x = rng.standard_normal(shape).astype(dtype)
    st = m.initial_state(batch)
    hx = None
    if with_hx:
        hx = tuple(
            rng.standard_normal(a.shape).astype(dtype)
            for a in (st if isinstance(st, tuple) else (st,))
        )
        hx = hx if isinstance(st, tuple) else hx[0]
    lengths = None
    if with_lengths:
        T = shape[1] if m.batch_first and batch is not None else shape[0]
        lengths = rng.integers(1, T + 1, size=batch)
        lengths[0] = T
    return x, hx, lengths


def assert_close(actual, expected, dtype, what=""):
    """Max-abs comparison at the dtype's parity tolerance."""
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} != {dtype}"
    err = np.max(np.abs(actual - expected)) if actual.size else 0.0
    assert err <= TOL[dtype], f"{what}: max abs error {err:.3g} > {TOL[dtype]:g}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def fast_simulator():
    """The CUDA simulator's block manager polls its threads: a short GIL switch interval
    makes its barriers about 5x faster."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


@pytest.fixture
def cuda_launches(monkeypatch):
    """Names of the ``fastrnn.cuda`` kernels launched during the test (proof of dispatch)."""
    from fastrnn.cuda import _device

    names = []
    real = _device.launch

    def counting(kernel, *args, **kwargs):
        names.append(getattr(kernel, "__name__", repr(kernel)))
        return real(kernel, *args, **kwargs)

    monkeypatch.setattr(_device, "launch", counting)
    return names
