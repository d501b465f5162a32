"""Inference: streaming step and whole sequences; fastrnn, torch.nn and onnxruntime."""

import os
import subprocess
import sys
import tempfile
import timeit

import numpy as np
import torch

import fastrnn
from fastrnn_torch.bench import stream

from .common import (
    INFERENCE_ENGINES,
    THREADS,
    TORCH,
    check_close,
    inputs,
    model_pair,
    onnx_session,
    use_threads,
)


def _step_callable(mode, hidden, engine):
    m, cell = model_pair(mode, hidden, cell=True)
    x = inputs(1, 1, hidden)[0]
    state = m.initial_state(1)
    xt = torch.from_numpy(x)
    z = torch.zeros(1, hidden)
    hx = (z, z) if mode == "LSTM" else z
    with torch.inference_mode():
        ref = cell(xt, hx)
    ref = ref[0] if mode == "LSTM" else ref
    check_close(m.step(x, state)[0], ref, f"{mode} step")
    if engine == "fastrnn":
        return stream(m, x)
    if engine == "torch":
        return lambda: cell(xt, hx)
    layer = TORCH[mode](hidden, hidden).eval()
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    h0 = torch.zeros(1, 1, hidden)
    args = (xt[None], (h0, h0)) if mode == "LSTM" else (xt[None], h0)
    session = onnx_session(layer, args, ["x", "h0", "c0"] if mode == "LSTM" else ["x", "h0"])
    if session is None:
        raise NotImplementedError("onnxruntime is not installed")
    feed = {"x": x[None], "h0": h0.numpy(), **({"c0": h0.numpy()} if mode == "LSTM" else {})}
    return lambda: session.run(None, feed)


class Step:
    """One time step at batch 1 (the low-latency service). torch's twin is nn.*Cell;
    onnxruntime runs the exported one-step layer."""

    params = (["LSTM", "GRU", "RNN"], [64, 256, 512], INFERENCE_ENGINES)
    param_names = ["mode", "hidden", "engine"]

    def setup(self, mode, hidden, engine):
        self.fn = _step_callable(mode, hidden, engine)
        self.fn()

    def time_step(self, mode, hidden, engine):
        with torch.inference_mode():
            self.fn()


class QuantizedStep:
    """fastrnn's batch-1 step with its weights stored as float32, int8 or bfloat16
    (``model.quantize``): what the narrower weights buy."""

    params = (["LSTM", "GRU", "RNN"], ["float32", "int8", "bfloat16"])
    param_names = ["mode", "weights"]

    def setup(self, mode, weights):
        m, _ = model_pair(mode, 256)
        self.model = m if weights == "float32" else m.quantize(weights)
        self.step = stream(self.model, inputs(1, 1, 256)[0])
        self.step()

    def time_step(self, mode, weights):
        self.step()


class QuantizedSequence:
    """fastrnn's whole sequence (T=100, hidden 256) with its weights stored as float32,
    int8 or bfloat16, at batch 1 and 64: the float32 peers are ``Sequence``'s rows (on a
    CPU with AVX512_BF16 bfloat16 runs on ``vdpbf16ps``, ``fastrnn.pairs``)."""

    params = (["LSTM", "GRU", "RNN"], ["float32", "int8", "bfloat16"], [1, 64])
    param_names = ["mode", "weights", "batch"]

    def setup(self, mode, weights, batch):
        m, _ = model_pair(mode, 256)
        self.model = m if weights == "float32" else m.quantize(weights)
        self.x = inputs(100, batch, 256)
        self.model(self.x)

    def time_sequence(self, mode, weights, batch):
        self.model(self.x)


def _sequence_callable(mode, batch, engine, T=100, hidden=256, threads=1):
    use_threads(threads)
    m, tm = model_pair(mode, hidden)
    x = inputs(T, batch, hidden)
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        check_close(m(x)[0], tm(xt)[0], f"{mode} sequence")
    if engine == "fastrnn":
        return lambda: m(x)
    if engine == "torch":
        return lambda: tm(xt)
    session = onnx_session(tm, (xt,), ["x"], threads)
    if session is None:
        raise NotImplementedError("onnxruntime is not installed")
    return lambda: session.run(None, {"x": x})


class Sequence:
    """A whole sequence, T=100, hidden 256, on 1 and 2 threads (every engine)."""

    params = (["LSTM", "GRU", "RNN"], [1, 64], INFERENCE_ENGINES, THREADS)
    param_names = ["mode", "batch", "engine", "threads"]

    def setup(self, mode, batch, engine, threads):
        self.fn = _sequence_callable(mode, batch, engine, threads=threads)
        self.fn()

    def teardown(self, mode, batch, engine, threads):
        use_threads(1)

    def time_sequence(self, mode, batch, engine, threads):
        with torch.inference_mode():
            self.fn()

    def peakmem_sequence(self, mode, batch, engine, threads):
        with torch.inference_mode():
            self.fn()


class ThreadScaling:
    """fastrnn's one-thread time / its two-thread time, side by side in one process."""

    params = (["LSTM", "GRU", "RNN"], [1, 64])
    param_names = ["mode", "batch"]
    timeout = 180

    def track_two_threads_vs_one(self, mode, batch):
        fn = _sequence_callable(mode, batch, "fastrnn", threads=2)
        times = {}
        for n in (1, 2, 1, 2):  # interleaved; the better of two rounds each
            use_threads(n)
            t = _best(fn, 5 if batch == 1 else 2)
            times[n] = min(times.get(n, t), t)
        use_threads(1)
        return times[1] / times[2]

    track_two_threads_vs_one.unit = "x faster"


def _best(fn, number, repeat=5):
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


class Speedup:
    """Other engine's time / fastrnn's time, measured side by side in one process."""

    params = (["LSTM", "GRU", "RNN"], ["torch", "onnxruntime"])
    param_names = ["mode", "versus"]
    timeout = 180

    def _ratio(self, make, versus, number):
        with torch.inference_mode():
            ours, theirs = make("fastrnn"), make(versus)
            return _best(theirs, number) / _best(ours, number)

    def track_speedup_step_h64(self, mode, versus):
        return self._ratio(lambda e: _step_callable(mode, 64, e), versus, 500)

    track_speedup_step_h64.unit = "x faster"

    def track_speedup_step_h256(self, mode, versus):
        return self._ratio(lambda e: _step_callable(mode, 256, e), versus, 200)

    track_speedup_step_h256.unit = "x faster"

    def track_speedup_sequence_b1(self, mode, versus):
        return self._ratio(lambda e: _sequence_callable(mode, 1, e), versus, 5)

    track_speedup_sequence_b1.unit = "x faster"

    def track_speedup_sequence_b64(self, mode, versus):
        return self._ratio(lambda e: _sequence_callable(mode, 64, e), versus, 2)

    track_speedup_sequence_b64.unit = "x faster"


_COLD = """
import time
t0 = time.perf_counter()
import sys, numpy as np, fastrnn
m = fastrnn.load(sys.argv[1])
m.step(np.zeros((1, m.input_size), np.float32), m.initial_state(1))
print(time.perf_counter() - t0)
assert "torch" not in sys.modules
"""


class ColdStart:
    """A fresh process with a warm Numba cache: import fastrnn, load a model, first step."""

    timeout = 120

    def setup(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "lstm.safetensors")
        fastrnn.save(fastrnn.LSTM(64, 64, num_layers=2, seed=0), self.path)
        self._run()  # warm the Numba cache for this model's kernels

    def _run(self):
        out = subprocess.run(
            [sys.executable, "-c", _COLD, self.path], check=True, capture_output=True, text=True
        )
        return float(out.stdout.strip())

    def track_import_load_first_step(self):
        return float(np.median([self._run() for _ in range(3)]))

    track_import_load_first_step.unit = "seconds"


def _cold_start_tool():
    """tools/cold_start.py of this checkout (one definition of the measured scenarios)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "cold_start.py")
    spec = importlib.util.spec_from_file_location("cold_start", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ColdCompile:
    """A fresh process with an *empty* Numba cache: import fastrnn and the first call of
    an LSTM(32, 64), compile time included (what a new container pays)."""

    params = (["forward", "step", "train"],)
    param_names = ["first_call"]
    timeout = 300
    number = 1
    repeat = 1

    def setup(self, first_call):
        self.tool = _cold_start_tool()

    def track_seconds(self, first_call):
        with tempfile.TemporaryDirectory() as cache:
            return self.tool.run(first_call, cache)

    track_seconds.unit = "seconds"
