"""Training through the PyTorch bridge (fastrnn_torch) vs torch.nn, same weights."""

import timeit

import torch

import fastrnn_torch as frt

from .common import ENGINES, check_close

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
    """nn.Module forward + backward: fastrnn_torch (after ``convert``) vs torch.nn."""

    params = (["LSTM", "GRU", "RNN"], [1, 32], ENGINES)
    param_names = ["mode", "batch", "engine"]

    def setup(self, mode, batch, engine):
        self.run = _step(mode, batch, engine)

    def time_forward_backward(self, mode, batch, engine):
        self.run()

    def peakmem_forward_backward(self, mode, batch, engine):
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
