"""Helpers shared by the test modules: fastrnn models with torch.nn twins, inputs,
tolerances, and the torch-side computations the tests compare with.

torch is optional: without it (the core's own test run), ``make_pair`` builds the
fastrnn model alone and the test modules that compare with torch are skipped.
"""

import numpy as np

import fastrnn

try:
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
except ImportError:  # the core's tests run without torch
    torch = None

#: Max-abs error allowed between fastrnn and torch.nn (or the reference) for one
#: forward pass, per dtype: float32 agrees to about 1e-5 on these problem sizes (a few
#: hundred rounded products per value), float64 to far better than 1e-10.
FORWARD_TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
#: A gradient sums over every step of the BPTT as well (tens of steps x layers x
#: directions here), so float32's rounding grows about tenfold; float64's margin covers it.
GRADIENT_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def tolerance(dtype, magnitude=1.0, gradient=False):
    """The one place the tests' tolerances come from: max-abs error allowed for values
    of about ``magnitude`` (errors are relative to it above 1)."""
    table = GRADIENT_TOLERANCE if gradient else FORWARD_TOLERANCE
    return table[np.dtype(dtype).name] * max(1.0, float(magnitude))


def _table(entries):
    """``{id: (fastrnn class, torch class or None, extra arguments)}``."""
    return {
        key: (ours, getattr(torch.nn, name) if torch is not None else None, extra)
        for key, (ours, name, extra) in entries.items()
    }


# (fastrnn class, torch class, extra constructor arguments), keyed by a test id.
KINDS = _table(
    {
        "rnn_tanh": (fastrnn.RNN, "RNN", {"nonlinearity": "tanh"}),
        "rnn_relu": (fastrnn.RNN, "RNN", {"nonlinearity": "relu"}),
        "lstm": (fastrnn.LSTM, "LSTM", {}),
        "lstm_proj": (fastrnn.LSTM, "LSTM", {"proj_size": 3}),
        "gru": (fastrnn.GRU, "GRU", {}),
    }
)
CELLS = _table(
    {
        "rnn_tanh": (fastrnn.RNNCell, "RNNCell", {"nonlinearity": "tanh"}),
        "rnn_relu": (fastrnn.RNNCell, "RNNCell", {"nonlinearity": "relu"}),
        "lstm": (fastrnn.LSTMCell, "LSTMCell", {}),
        "gru": (fastrnn.GRUCell, "GRUCell", {}),
    }
)
TORCH_DTYPE = {} if torch is None else {"float32": torch.float32, "float64": torch.float64}


def make_pair(kind, input_size, hidden_size, dtype, table=KINDS, **kwargs):
    """A fastrnn model and the torch module whose weights it loaded (the model alone,
    seeded, and None without torch)."""
    ours, theirs, extra = table[kind]
    args = {**extra, **kwargs}
    if torch is None:
        return ours(input_size, hidden_size, dtype=dtype, seed=0, **args), None
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
    if torch is not None and isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} != {dtype}"
    err = np.max(np.abs(actual - expected)) if actual.size else 0.0
    tol = tolerance(dtype)
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:g}"


def tensors(a, requires_grad=True):
    if a is None:
        return None
    if isinstance(a, tuple):
        return tuple(tensors(b, requires_grad) for b in a)
    return torch.from_numpy(np.array(a)).requires_grad_(requires_grad)


def flat_state(a):
    return a if isinstance(a, tuple) else (a,)


def assert_grad(actual, expected, dtype, what):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    assert actual.shape == expected.shape, f"{what}: {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    err = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    tol = tolerance(dtype, scale, gradient=True)
    assert err <= tol, f"{what}: error {err:.3g} (scale {scale:.3g})"


def torch_grads(tm, x, hx, lengths, batch_first, gy, gstate):
    """Run torch forward + backward with the given output/state gradients."""
    xt = tensors(x)
    hxt = tensors(hx)
    if lengths is None:
        y, state = tm(xt, hxt)
    else:
        T = x.shape[1] if batch_first else x.shape[0]
        packed = pack_padded_sequence(
            xt, torch.as_tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        y, state = tm(packed, hxt)
        y, _ = pad_packed_sequence(y, batch_first=batch_first, total_length=T)
    loss = (y * torch.from_numpy(gy)).sum()
    for s, g in zip(flat_state(state), flat_state(gstate)):
        loss = loss + (s * torch.from_numpy(g)).sum()
    loss.backward()
    return xt.grad, None if hxt is None else tuple(h.grad for h in flat_state(hxt))


def pair_and_inputs(
    kind, dtype, rng, T, B, I, H, num_layers=1, bidirectional=False, batch_first=False,
    bias=True, with_hx=True, with_lengths=False, unbatched=False,
):  # fmt: skip
    """A model with its torch twin (:func:`make_pair`) and random ``(x, hx, lengths)``
    (:func:`random_inputs`) in the model's layout."""
    m, tm = make_pair(
        kind, I, H, dtype, num_layers=num_layers, bidirectional=bidirectional,
        batch_first=batch_first, bias=bias,
    )  # fmt: skip
    shape, bsz = ((T, I), None) if unbatched else (((B, T, I) if batch_first else (T, B, I)), B)
    return (m, tm) + random_inputs(m, rng, shape, bsz, dtype, with_hx, with_lengths)


def check_grads(
    kind,
    dtype,
    rng,
    *,
    T=5,
    B=3,
    I=4,
    H=5,
    num_layers=1,
    bidirectional=False,
    batch_first=False,
    bias=True,
    with_hx=True,
    with_lengths=False,
    unbatched=False,
    backend=None,
):
    """Forward (model call and ``forward_train`` agree exactly), outputs, final states
    and every gradient against torch.nn, computed on ``backend`` (a :class:`Backend`;
    the CPU if None)."""
    backend = backend or Backend("cpu")
    m, tm, x, hx, lengths = pair_and_inputs(
        kind, dtype, rng, T, B, I, H, num_layers, bidirectional, batch_first, bias, with_hx,
        with_lengths, unbatched,
    )  # fmt: skip
    dx, dhx = backend.device(x), backend.device(hx)
    y, state, tape = m.forward_train(dx, dhx, lengths=lengths)
    y_call, _ = m(dx, dhx, lengths=lengths)
    y, state = backend.host(y), backend.host(state)
    np.testing.assert_array_equal(y, backend.host(y_call))
    ty, tstate = torch_forward(tm, x, hx, lengths, batch_first)
    assert_grad(y, ty, dtype, "output")
    for a, b, name in zip(flat_state(state), flat_state(tstate), ("h_n", "c_n")):
        assert_grad(a, b, dtype, name)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gstate = tuple(rng.standard_normal(a.shape).astype(dtype) for a in flat_state(state))
    grads = m.backward(
        tape, backend.device(gy), backend.device(gstate if isinstance(state, tuple) else gstate[0])
    )
    tgx, thx = torch_grads(tm, x, hx, lengths, batch_first, gy, gstate)
    assert_grad(backend.host(grads.input), tgx, dtype, "input")
    if hx is not None:
        for a, b, name in zip(flat_state(backend.host(grads.hx)), thx, ("h0", "c0")):
            assert_grad(a, b, dtype, name)
    params = backend.host(grads.params)
    for name, p in tm.named_parameters():
        assert_grad(params[name], p.grad, dtype, name)
    assert list(params) == [n for n, _ in tm.named_parameters()]
    return m, grads


def torch_forward(tm, x, hx, lengths, batch_first):
    """torch.nn on the same data, through PackedSequence when lengths are given."""
    xt = torch.from_numpy(x)
    if hx is not None:
        hx = (
            tuple(torch.from_numpy(a) for a in hx)
            if isinstance(hx, tuple)
            else torch.from_numpy(hx)
        )
    with torch.no_grad():
        if lengths is None:
            return tm(xt, hx)
        T = x.shape[1] if batch_first else x.shape[0]
        packed = pack_padded_sequence(
            xt, torch.as_tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        y, state = tm(packed, hx)
        y, _ = pad_packed_sequence(y, batch_first=batch_first, total_length=T)
        return y, state


def compare(
    kind,
    dtype,
    rng,
    *,
    T=5,
    B=3,
    I=4,
    H=6,
    num_layers=1,
    bidirectional=False,
    batch_first=False,
    bias=True,
    with_hx=False,
    with_lengths=False,
):
    m, tm, x, hx, lengths = pair_and_inputs(
        kind, dtype, rng, T, B, I, H, num_layers, bidirectional, batch_first, bias, with_hx,
        with_lengths,
    )  # fmt: skip
    y, state = m(x, hx, lengths=lengths)
    ty, tstate = torch_forward(tm, x, hx, lengths, batch_first)
    assert_close(y, ty, dtype, "output")
    if isinstance(state, tuple):
        assert_close(state[0], tstate[0], dtype, "h_n")
        assert_close(state[1], tstate[1], dtype, "c_n")
    else:
        assert_close(state, tstate, dtype, "h_n")
    return m, x, hx, lengths, y, state


class Backend:
    """Where a test's arrays live: ``"cpu"`` (NumPy) or ``"cuda"`` (device arrays, on
    Numba's CUDA simulator or, with ``FASTRNN_TEST_GPU=1``, the GPU). The ``backend``
    fixture runs one test body on each."""

    def __init__(self, name):
        self.name = name

    @property
    def sizes(self):
        """``(T, B, I, H)`` of a parity test on this backend: tiny on the CUDA simulator
        (it runs every GPU thread in Python), real sizes on a GPU."""
        if self.name == "cuda" and not fastrnn.cuda.is_simulator():
            return (12, 8, 16, 64)
        return (4, 2, 3, 4) if self.name == "cuda" else (5, 3, 4, 5)

    def device(self, a):
        """``a`` (arrays, nested in tuples/lists/dicts) where this backend computes."""
        if self.name == "cpu":
            return a
        if isinstance(a, np.ndarray):
            from numba import cuda

            return cuda.to_device(np.ascontiguousarray(a))
        if isinstance(a, (tuple, list)):
            return type(a)(self.device(b) for b in a)
        if isinstance(a, dict):
            return {k: self.device(v) for k, v in a.items()}
        return a

    def host(self, a):
        """``a`` back as NumPy arrays."""
        if hasattr(a, "copy_to_host"):
            return a.copy_to_host()
        if isinstance(a, (tuple, list)):
            return type(a)(self.host(b) for b in a)
        if isinstance(a, dict):
            return {k: self.host(v) for k, v in a.items()}
        return a

    def wrap(self, module):
        """``module`` whose functions take and give NumPy arrays but compute on this
        backend (the module itself on the CPU)."""
        return module if self.name == "cpu" else _OnBackend(self, module)


class _OnBackend:
    def __init__(self, backend, module):
        self._backend, self._module = backend, module

    def __getattr__(self, name):
        fn, b = getattr(self._module, name), self._backend

        def call(*args, **kwargs):
            return b.host(fn(*b.device(list(args)), **b.device(kwargs)))

        return call
