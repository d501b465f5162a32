"""Helpers of the bridge's tests: fastrnn_torch modules with torch.nn twins, and a
comparison of outputs and every gradient."""

import torch

import fastrnn_torch as frt

from .helpers import TORCH_DTYPE, tolerance

#: The bridge's float32 products run on torch's oneDNN GEMM, whose summation order is
#: not torch.nn's own: twice the forward tolerance.
TOL = {dtype: tolerance(dtype, 2.0) for dtype in ("float32", "float64")}
LAYERS = {
    "rnn_tanh": (frt.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (frt.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (frt.LSTM, torch.nn.LSTM, {}),
    "lstm_proj": (frt.LSTM, torch.nn.LSTM, {"proj_size": 3}),
    "gru": (frt.GRU, torch.nn.GRU, {}),
}
CELLS = {
    "rnn_tanh": (frt.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (frt.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (frt.LSTMCell, torch.nn.LSTMCell, {}),
    "gru": (frt.GRUCell, torch.nn.GRUCell, {}),
}


def twins(table, kind, dtype, *args, **kwargs):
    ours, theirs, extra = table[kind]
    torch.manual_seed(0)
    tm = theirs(*args, **extra, **kwargs).to(TORCH_DTYPE[dtype])
    m = ours(*args, **extra, **kwargs).to(TORCH_DTYPE[dtype])
    m.load_state_dict(tm.state_dict())
    return m, tm


def flat(x):
    if isinstance(x, torch.nn.utils.rnn.PackedSequence):
        return [x.data]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in flat(item)]
    return [x]


def run_both(m, tm, inputs, dtype, seed=0):
    """Same forward on both, a random linear loss of every output, compare all grads."""
    ours_in = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    theirs_in = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    out = m(*_rebuild(ours_in, inputs))
    tout = tm(*_rebuild(theirs_in, inputs))
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in flat(tout)]
    for a, b in zip(flat(out), flat(tout)):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= TOL[dtype], "output"
    sum((a * w).sum() for a, w in zip(flat(out), weights)).backward()
    sum((b * w).sum() for b, w in zip(flat(tout), weights)).backward()
    for a, b in zip(ours_in, theirs_in):
        if a is not None and a.grad is not None:
            assert (a.grad - b.grad).abs().max().item() <= TOL[dtype], "input/state grad"
    for (name, p), q in zip(m.named_parameters(), tm.parameters()):
        assert (p.grad - q.grad).abs().max().item() <= TOL[dtype] * max(1, q.grad.abs().max()), name


def _rebuild(leaves, template):
    """Inputs are (x, h) or (x, (h, c)) flattened as x, h[, c]."""
    x = leaves[0]
    if len(template) == 1 or template[1] is None:
        return (x,)
    return (x, tuple(leaves[1:])) if len(template) == 3 else (x, leaves[1])


def grads_match(f_ours, f_ref, inputs, params=(), tol=1e-10):
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    ys = [x.detach().clone().requires_grad_(True) for x in inputs]
    out, ref = f_ours(*xs), f_ref(*ys)
    out, ref = (
        (out if isinstance(out, tuple) else (out,)),
        (ref if isinstance(ref, tuple) else (ref,)),
    )
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(r.shape, generator=g, dtype=r.dtype) for r in ref]
    for a, b in zip(out, ref):
        assert (a - b).abs().max() <= tol
    ours_params = [p for m in params for p in m[0].parameters()]
    ref_params = [p for m in params for p in m[1].parameters()]
    sum((a * w).sum() for a, w in zip(out, ws)).backward()
    sum((b * w).sum() for b, w in zip(ref, ws)).backward()
    for a, b in zip(xs + ours_params, ys + ref_params):
        assert (a.grad - b.grad).abs().max() <= tol
