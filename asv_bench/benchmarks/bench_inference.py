"""Inference: streaming step and whole sequences, fastrnn vs torch.nn in the same class."""

import torch

from .common import ENGINES, inputs, model_pair


class Step:
    """One time step at batch 1 (the low-latency service). torch's twin is nn.*Cell."""

    params = (["LSTM", "GRU", "RNN"], [64, 256, 512], ENGINES)
    param_names = ["mode", "hidden", "engine"]

    def setup(self, mode, hidden, engine):
        m, tm = model_pair(mode, hidden, cell=True)
        x = inputs(1, 1, hidden)[0]
        if engine == "fastrnn":
            state = m.initial_state(1)
            self.fn = lambda: m.step(x, state)
        else:
            xt = torch.from_numpy(x)
            z = torch.zeros(1, hidden)
            hx = (z, z) if mode == "LSTM" else z
            self.fn = lambda: tm(xt, hx)
        self.fn()

    def time_step(self, mode, hidden, engine):
        with torch.inference_mode():
            self.fn()


class Sequence:
    """A whole sequence, T=100, hidden 256."""

    params = (["LSTM", "GRU", "RNN"], [1, 64], ENGINES)
    param_names = ["mode", "batch", "engine"]

    def setup(self, mode, batch, engine):
        m, tm = model_pair(mode, 256)
        x = inputs(100, batch, 256)
        if engine == "fastrnn":
            self.fn = lambda: m(x)
        else:
            xt = torch.from_numpy(x)
            self.fn = lambda: tm(xt)
        self.fn()

    def time_sequence(self, mode, batch, engine):
        with torch.inference_mode():
            self.fn()

    def peakmem_sequence(self, mode, batch, engine):
        with torch.inference_mode():
            self.fn()


def _best(fn, number, repeat=5):
    import timeit

    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


class Speedup:
    """torch.nn time / fastrnn time, both measured side by side in one process."""

    params = (["LSTM", "GRU", "RNN"],)
    param_names = ["mode"]
    timeout = 120

    def _ratio(self, mode, T, B, hidden, cell):
        m, tm = model_pair(mode, hidden, cell=cell)
        x = inputs(T, B, hidden)
        xt = torch.from_numpy(x)
        if cell:
            state = m.initial_state(B)
            z = torch.zeros(B, hidden)
            hx = (z, z) if mode == "LSTM" else z
            ours, theirs = (lambda: m.step(x[0], state)), (lambda: tm(xt[0], hx))
        else:
            ours, theirs = (lambda: m(x)), (lambda: tm(xt))
        number = 200 if cell else 5
        with torch.inference_mode():
            ours()
            theirs()
            return _best(theirs, number) / _best(ours, number)

    def track_speedup_step_h256(self, mode):
        return self._ratio(mode, 1, 1, 256, cell=True)

    track_speedup_step_h256.unit = "x faster than torch.nn (*Cell)"

    def track_speedup_sequence_b1(self, mode):
        return self._ratio(mode, 100, 1, 256, cell=False)

    track_speedup_sequence_b1.unit = "x faster than torch.nn"

    def track_speedup_sequence_b64(self, mode):
        return self._ratio(mode, 100, 64, 256, cell=False)

    track_speedup_sequence_b64.unit = "x faster than torch.nn"
