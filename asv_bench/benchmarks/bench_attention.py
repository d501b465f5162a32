"""Attention forward and forward+backward: fastrnn_torch vs torch, same inputs."""

import timeit

import torch
import torch.nn.functional as F

import fastrnn_torch as frt

from .common import ENGINES, check_close

SDPA = {"fastrnn": frt.scaled_dot_product_attention, "torch": F.scaled_dot_product_attention}


def _sdpa_inputs(batch, length, heads=4, d=64, grad=False):
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, heads, length, d, generator=g).requires_grad_(grad) for _ in range(3)
    ]


class ScaledDotProduct:
    """(B=1, L=32..512) and (B=32, L=64), 4 heads of 64."""

    params = ([(1, 32), (1, 128), (1, 512), (32, 64)], ENGINES)
    param_names = ["batch_length", "engine"]

    def setup(self, batch_length, engine):
        self.f = SDPA[engine]
        self.x = _sdpa_inputs(*batch_length)
        self.xg = _sdpa_inputs(*batch_length, grad=True)
        with torch.no_grad():
            check_close(
                frt.scaled_dot_product_attention(*self.x).numpy(),
                F.scaled_dot_product_attention(*self.x),
                "attention output",
            )

    def time_forward(self, batch_length, engine):
        with torch.no_grad():
            self.f(*self.x)

    def time_forward_backward(self, batch_length, engine):
        self.f(*self.xg).sum().backward()


class TutorialAttn:
    """The seq2seq tutorial's Attn at its own sizes (32, 32, 32, 64, 32), batch 1."""

    params = (ENGINES,)
    param_names = ["engine"]

    def setup(self, engine):
        torch.manual_seed(0)
        self.m = frt.Attn(32, 32, 32, 64, 32)
        self.f = self.m if engine == "fastrnn" else self.m._torch_forward
        self.args = (torch.randn(1, 1, 32), torch.randn(1, 1, 32), torch.randn(1, 32, 64))

    def time_forward(self, engine):
        with torch.no_grad():
            self.f(*self.args)

    def time_forward_backward(self, engine):
        out, w = self.f(*self.args)
        out.sum().backward()


class AttentionSpeedup:
    """torch time / fastrnn time, side by side in one process."""

    params = ([(1, 32), (1, 512), (32, 64)],)
    param_names = ["batch_length"]
    timeout = 120

    def _ratio(self, batch_length, backward):
        times = {}
        for engine in ENGINES:
            f = SDPA[engine]
            x = _sdpa_inputs(*batch_length, grad=backward)

            def run(f=f, x=x):
                if backward:
                    f(*x).sum().backward()
                else:
                    with torch.no_grad():
                        f(*x)

            run()
            times[engine] = min(timeit.repeat(run, number=5, repeat=5)) / 5
        return times["torch"] / times["fastrnn"]

    def track_speedup_forward(self, batch_length):
        return self._ratio(batch_length, False)

    track_speedup_forward.unit = "x faster than torch"

    def track_speedup_forward_backward(self, batch_length):
        return self._ratio(batch_length, True)

    track_speedup_forward_backward.unit = "x faster than torch"
