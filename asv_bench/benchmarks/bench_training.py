"""Training: forward + backward through time, fastrnn (core arrays) vs torch.nn autograd."""

import numpy as np
import torch

from .common import ENGINES, check_close, inputs, model_pair


class BPTT:
    """forward_train + backward vs torch forward + backward; T=50, hidden 256."""

    params = (["LSTM", "GRU", "RNN"], [1, 32], ENGINES)
    param_names = ["mode", "batch", "engine"]

    def setup(self, mode, batch, engine):
        m, tm = model_pair(mode, 256)
        x = inputs(50, batch, 256)
        gy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_(True)
        tm(xt)[0].backward(torch.from_numpy(gy))
        y, _, tape = m.forward_train(x)
        check_close(m.backward(tape, gy).input, xt.grad, f"{mode} input gradient")
        if engine == "fastrnn":

            def run():
                y, state, tape = m.forward_train(x)
                m.backward(tape, gy)
        else:
            xt = torch.from_numpy(x).requires_grad_(True)
            gyt = torch.from_numpy(gy)

            def run():
                y, _ = tm(xt)
                y.backward(gyt)

        self.run = run
        run()

    def time_forward_backward(self, mode, batch, engine):
        self.run()

    def peakmem_forward_backward(self, mode, batch, engine):
        self.run()


class BPTTSpeedup:
    """torch.nn time / fastrnn time for forward + backward, side by side in one process."""

    params = (["LSTM", "GRU", "RNN"], [1, 32])
    param_names = ["mode", "batch"]
    timeout = 180

    def track_speedup(self, mode, batch):
        import timeit

        times = {}
        for engine in ENGINES:
            BPTT.setup(self, mode, batch, engine)
            number = 10 if batch == 1 else 3
            times[engine] = min(timeit.repeat(self.run, number=number, repeat=5)) / number
        return times["torch"] / times["fastrnn"]

    track_speedup.unit = "x faster than torch.nn"
