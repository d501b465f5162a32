"""Training through the PyTorch bridge (fastrnn_torch) vs torch.nn, same weights."""

import timeit

import torch

import fastrnn_torch as frt

from .common import ENGINES, THREADS, check_close, use_threads

TORCH = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}


def _step(mode, batch, engine, T=50, size=256):
    torch.manual_seed(0)
    module = TORCH[mode](size, size)
    x = torch.randn(T, batch, size, requires_grad=True)
    gy = torch.randn(T, batch, size)

    def run():
        x.grad = None
        y, _ = module(x)
        y.backward(gy)
        return x.grad

    if engine == "fastrnn":
        reference = run().clone()
        frt.convert(module)
        check_close(run().numpy(), reference, f"{mode} bridge input gradient")
    run()
    return run


class BridgeTraining:
    """nn.Module forward + backward: fastrnn_torch (after ``convert``) vs torch.nn, on
    1 and 2 threads."""

    params = (["LSTM", "GRU", "RNN"], [1, 32], ENGINES, THREADS)
    param_names = ["mode", "batch", "engine", "threads"]

    def setup(self, mode, batch, engine, threads):
        use_threads(threads)
        self.run = _step(mode, batch, engine)

    def teardown(self, mode, batch, engine, threads):
        use_threads(1)

    def time_forward_backward(self, mode, batch, engine, threads):
        self.run()

    def peakmem_forward_backward(self, mode, batch, engine, threads):
        self.run()


class BridgeTrainingSpeedup:
    """torch.nn time / fastrnn_torch time, measured side by side in one process."""

    params = (["LSTM", "GRU", "RNN"], [1, 32])
    param_names = ["mode", "batch"]
    timeout = 180

    def track_speedup(self, mode, batch):
        number = 10 if batch == 1 else 3
        times = {
            e: min(timeit.repeat(_step(mode, batch, e), number=number, repeat=5)) / number
            for e in ENGINES
        }
        return times["torch"] / times["fastrnn"]

    track_speedup.unit = "x faster than torch.nn"


def _cell_loop(mode, batch, hidden, engine, T=20):
    """A *Cell stepped T times in a Python loop, then backward (decoders, time series)."""
    torch.manual_seed(0)
    cell = getattr(torch.nn, mode + "Cell")(hidden, hidden)
    xs = torch.randn(T, batch, hidden, requires_grad=True)

    def run():
        xs.grad = None
        h = torch.zeros(batch, hidden)
        state = (h, h) if mode == "LSTM" else h
        loss = 0
        for t in range(T):
            state = cell(xs[t], state)
            loss = loss + (state[0] if mode == "LSTM" else state).sum()
        loss.backward()
        return xs.grad

    if engine == "fastrnn":
        reference = run().clone()
        frt.convert(cell)
        check_close(run().numpy(), reference, f"{mode}Cell loop input gradient")
    run()
    return run


class BridgeCellLoop:
    """*Cell loop, forward + backward: fastrnn_torch vs torch.nn."""

    params = (["LSTM", "GRU", "RNN"], [1, 32, 64], [64, 256, 512], ENGINES)
    param_names = ["mode", "batch", "hidden", "engine"]

    def setup(self, mode, batch, hidden, engine):
        self.run = _cell_loop(mode, batch, hidden, engine)

    def time_cell_loop(self, mode, batch, hidden, engine):
        self.run()


class BridgeCellLoopSpeedup:
    """torch.nn time / fastrnn_torch time for the cell loop, side by side."""

    params = (["LSTM", "GRU", "RNN"], [1, 32], [64, 256])
    param_names = ["mode", "batch", "hidden"]
    timeout = 180

    def track_speedup(self, mode, batch, hidden):
        times = {
            e: min(timeit.repeat(_cell_loop(mode, batch, hidden, e), number=3, repeat=5)) / 3
            for e in ENGINES
        }
        return times["torch"] / times["fastrnn"]

    track_speedup.unit = "x faster"
