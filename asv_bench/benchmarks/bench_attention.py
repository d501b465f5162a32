"""Attention forward and forward+backward: fastrnn_torch vs torch, same inputs."""

import timeit

import torch
import torch.nn.functional as F

import fastrnn_torch as frt

from .common import ENGINES, check_close

SDPA = {"fastrnn": frt.scaled_dot_product_attention, "torch": F.scaled_dot_product_attention}


def _sdpa_inputs(length, batch=8, heads=4, d=64, grad=False):
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, heads, length, d, generator=g).requires_grad_(grad) for _ in range(3)
    ]


class ScaledDotProduct:
    """The bridge's single-core target workload: B=8, 4 heads of 64, L = 16, 64, 128,
    causal or not."""

    params = ([16, 64, 128], [False, True], ENGINES)
    param_names = ["length", "causal", "engine"]

    def setup(self, length, causal, engine):
        self.f = SDPA[engine]
        self.x = _sdpa_inputs(length)
        self.xg = _sdpa_inputs(length, grad=True)
        with torch.no_grad():
            check_close(
                frt.scaled_dot_product_attention(*self.x, is_causal=causal).numpy(),
                F.scaled_dot_product_attention(*self.x, is_causal=causal),
                "attention output",
            )

    def time_forward(self, length, causal, engine):
        with torch.no_grad():
            self.f(*self.x, is_causal=causal)

    def time_forward_backward(self, length, causal, engine):
        self.f(*self.xg, is_causal=causal).sum().backward()


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
    """torch time / fastrnn time on :class:`ScaledDotProduct`'s workloads, side by side
    in one process (repetitions interleaved, medians)."""

    params = ([16, 64, 128], [False, True])
    param_names = ["length", "causal"]
    timeout = 120

    def _ratio(self, length, causal, backward):
        runs = {}
        for engine in ENGINES:
            f = SDPA[engine]
            x = _sdpa_inputs(length, grad=backward)

            def run(f=f, x=x):
                if backward:
                    f(*x, is_causal=causal).sum().backward()
                else:
                    with torch.no_grad():
                        f(*x, is_causal=causal)

            run()
            runs[engine] = run
        times = {engine: [] for engine in ENGINES}
        for _ in range(7):
            for engine in ENGINES:
                times[engine].append(timeit.timeit(runs[engine], number=5) / 5)
        median = {engine: sorted(t)[len(t) // 2] for engine, t in times.items()}
        return median["torch"] / median["fastrnn"]

    def track_speedup_forward(self, length, causal):
        return self._ratio(length, causal, False)

    track_speedup_forward.unit = "x faster than torch"

    def track_speedup_forward_backward(self, length, causal):
        return self._ratio(length, causal, True)

    track_speedup_forward_backward.unit = "x faster than torch"


class DecoderStepAttention:
    """A decoder step's attention layer, forward + backward, against the same layer
    written with torch ops (same parameters): the tutorial's ``Attn`` at its sizes, and
    additive / Luong with query (B, 256), keys and values (B, 32, 256) — the workload of
    ``fastrnn bench``'s ``Attn`` rows (``fastrnn_torch.bench_attention``)."""

    params = (["Attn", "additive", "dot", "general", "concat"], [1, 32], ENGINES)
    param_names = ["kind", "batch", "engine"]

    def setup(self, kind, batch, engine):
        if kind == "Attn" and batch != 1:
            raise NotImplementedError("the tutorial's Attn is timed at batch 1")
        from fastrnn_torch.bench_attention import attention_layer_thunks

        runs = attention_layer_thunks(kind, batch)  # each returns the inputs' gradients
        ours, theirs = runs["fastrnn"](), runs["torch"]()
        scale = max(1.0, float(theirs.abs().max()))  # float32 scores of 256 terms
        check_close(ours.numpy(), theirs, "attention gradients", tol=1e-5 * scale)
        self.run = runs[engine]

    def time_forward_backward(self, kind, batch, engine):
        self.run()
