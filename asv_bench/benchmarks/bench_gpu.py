"""fastrnn's CUDA kernels vs torch.nn on cuDNN (skipped where there is no GPU).

The workloads of ``fastrnn bench --gpu`` (``fastrnn_torch.bench_gpu``): T=100,
input size = hidden, forward without grad and training (forward + backward).
"""

import torch

from fastrnn_torch import bench_gpu


def _require_gpu():
    import fastrnn

    if not (
        torch.cuda.is_available()
        and fastrnn.cuda.is_available()
        and not fastrnn.cuda.is_simulator()
    ):
        raise NotImplementedError("no CUDA GPU (asv skips this benchmark)")


class GPUSequence:
    """One model over T=100 steps on the GPU: fastrnn_torch vs torch.nn (cuDNN)."""

    params = (
        ["LSTM", "GRU", "RNN"],
        [256, 1024],
        [1, 8, 64],
        ["fastrnn", "torch"],
        ["forward", "training"],
    )
    param_names = ["mode", "hidden", "batch", "engine", "task"]

    def setup(self, mode, hidden, batch, engine, task):
        _require_gpu()
        ours, theirs = bench_gpu.pair(mode, hidden)
        x = torch.randn(bench_gpu.T, batch, hidden, device="cuda", requires_grad=True)
        with torch.no_grad():
            diff = (ours(x)[0] - theirs(x)[0]).abs().max().item()
        assert diff < 1e-3, f"fastrnn and torch.nn differ by {diff}"
        make = bench_gpu.forward_fn if task == "forward" else bench_gpu.training_fn
        self.run = make(ours if engine == "fastrnn" else theirs, x)
        self.run()  # compile and warm up

    def time_sequence(self, mode, hidden, batch, engine, task):
        self.run()
        torch.cuda.synchronize()


class GPUSpeedup:
    """torch.nn (cuDNN) time / fastrnn time, CUDA-event timed side by side."""

    params = (["LSTM", "GRU"], [256, 1024], [1, 8, 64], ["forward", "training"])
    param_names = ["mode", "hidden", "batch", "task"]
    timeout = 300

    def setup(self, *args):
        _require_gpu()

    def track_speedup(self, mode, hidden, batch, task):
        ours, theirs = bench_gpu.pair(mode, hidden)
        x = torch.randn(bench_gpu.T, batch, hidden, device="cuda", requires_grad=True)
        make = bench_gpu.forward_fn if task == "forward" else bench_gpu.training_fn
        f_ours, f_theirs = make(ours, x), make(theirs, x)
        f_ours(), f_theirs()
        return bench_gpu.median_ms(f_theirs, 10) / bench_gpu.median_ms(f_ours, 10)

    track_speedup.unit = "x"
