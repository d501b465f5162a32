"""``fastrnn bench``: fastrnn vs torch.nn on the same weights, side by side in one run."""

import time
from functools import partial

import numpy as np
import torch

import fastrnn

# The embedded default configuration: (label, kind, seq_len, batch, size).
CASES = [
    ("step B=1 H=256", "step", 1, 1, 256),
    ("seq T=100 B=1 H=256", "seq", 100, 1, 256),
    ("seq T=100 B=64 H=256", "seq", 100, 64, 256),
]
MODELS = [("LSTM", fastrnn.LSTM, torch.nn.LSTM, torch.nn.LSTMCell),
          ("GRU", fastrnn.GRU, torch.nn.GRU, torch.nn.GRUCell),
          ("RNN", fastrnn.RNN, torch.nn.RNN, torch.nn.RNNCell)]


def best_time(fn, repeats, min_time=0.05):
    """Best per-call seconds over ``repeats`` rounds of enough calls to last ``min_time``."""
    fn()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < min_time / 5:
        fn()
        n += 1
    number = max(1, n * 5)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def _pair(name, ours, theirs, cell, kind, size):
    torch.manual_seed(0)
    if kind == "step":  # torch's fastest single-step path is the *Cell module
        tm = cell(size, size)
        m = ours(size, size)
        m.load_state_dict({k + "_l0": v for k, v in tm.state_dict().items()})
    else:
        tm = theirs(size, size)
        m = ours(size, size)
        m.load_state_dict(tm.state_dict())
    return m, tm.eval()


def run_case(name, ours, theirs, cell, kind, T, B, size, repeats):
    m, tm = _pair(name, ours, theirs, cell, kind, size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, size)).astype(np.float32)
    xt = torch.from_numpy(x)
    if kind == "step":
        state = m.initial_state(B)
        tstate = tuple(torch.zeros(B, size) for _ in range(2)) if name == "LSTM" \
            else torch.zeros(B, size)
        ours_fn = lambda: m.step(x[0], state)  # noqa: E731
        theirs_fn = lambda: tm(xt[0], tstate)  # noqa: E731
        y = ours_fn()[0]
        with torch.inference_mode():
            ty = theirs_fn()
        ty = ty[0] if isinstance(ty, tuple) else ty
    else:
        ours_fn = lambda: m(x)  # noqa: E731
        theirs_fn = lambda: tm(xt)  # noqa: E731
        y = ours_fn()[0]
        with torch.inference_mode():
            ty = theirs_fn()[0]
    diff = float(np.max(np.abs(y - ty.numpy())))
    t_ours = best_time(ours_fn, repeats)
    with torch.inference_mode():
        t_theirs = best_time(theirs_fn, repeats)
    return diff, t_ours, t_theirs


def _fmt(seconds):
    return f"{seconds * 1e6:9.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:9.3f} ms"


def main(quick=False, cores=0):
    repeats = 3 if quick else 7
    torch_threads = torch.get_num_threads()
    print(f"fastrnn {fastrnn.__version__} vs torch {torch.__version__} "
          f"(float32, inference, same weights; torch threads {torch_threads}"
          f"{f', pinned to {cores} core(s)' if cores else ''})")
    inference = [(name, label, f"nn.{name}Cell" if kind == "step" else f"nn.{name}",
                  partial(run_case, name, ours, theirs, cell, kind, T, B, size, repeats))
                 for name, ours, theirs, cell in MODELS
                 for label, kind, T, B, size in CASES]
    training = [(name, f"train T=50 B={B} H=256", f"nn.{name} + autograd",
                 partial(run_training, ours, theirs, B, repeats))
                for name, ours, theirs, cell in MODELS for B in (1, 32)]
    bridge = [(name, f"bridge T=50 B={B} H=256", f"nn.{name} + autograd",
               partial(run_bridge_training, name, theirs, B, repeats))
              for name, ours, theirs, cell in MODELS for B in (1, 32)]
    _table(None, inference)
    _table("training: forward + backward through time, T=50, H=256; max|diff| of d(input)",
           training)
    _table("training through the bridge (fastrnn_torch module + autograd), T=50, H=256",
           bridge)


def _table(title, rows):
    """Print one table; each row is (model, case, torch's twin, measure -> (diff, ours, theirs))."""
    header = f"{'model':5} {'case':22} {'max|diff|':>10} {'fastrnn':>12} {'torch.nn':>12} " \
             f"{'speed-up':>9}"
    if title:
        print()
        print(title)
    print(header)
    print("-" * len(header))
    for name, label, twin, measure in rows:
        diff, a, b = measure()
        print(f"{name:5} {label:22} {diff:10.2e} {_fmt(a):>12} {_fmt(b):>12} "
              f"{b / a:8.2f}x   (torch: {twin})")


def run_bridge_training(name, theirs, B, repeats, T=50, size=256):
    """fastrnn_torch module forward + backward vs the torch.nn module, same weights."""
    import fastrnn_torch

    torch.manual_seed(0)
    tm = theirs(size, size)
    m = getattr(fastrnn_torch, name)(size, size)
    m.load_state_dict(tm.state_dict())
    x = torch.randn(T, B, size, requires_grad=True)
    gy = torch.randn(T, B, size)

    def step(module):
        def run():
            x.grad = None
            y, _ = module(x)
            y.backward(gy)
            return x.grad
        return run

    diff = float((step(m)() - step(tm)()).abs().max())
    return diff, best_time(step(m), repeats), best_time(step(tm), repeats)


def run_training(ours, theirs, B, repeats, T=50, size=256):
    """forward_train + backward vs torch forward + backward, same weights and data."""
    torch.manual_seed(0)
    tm = theirs(size, size)
    m = ours(size, size)
    m.load_state_dict(tm.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, size)).astype(np.float32)
    gy = rng.standard_normal((T, B, size)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    gyt = torch.from_numpy(gy)

    def ours_fn():
        y, _, tape = m.forward_train(x)
        return m.backward(tape, gy)

    def theirs_fn():
        xt.grad = None
        y, _ = tm(xt)
        y.backward(gyt)

    diff = float(np.max(np.abs(ours_fn().input - (theirs_fn() or xt.grad).numpy())))
    return diff, best_time(ours_fn, repeats), best_time(theirs_fn, repeats)
