"""``fastrnn bench --gpu``: fastrnn's CUDA kernels against torch.nn (cuDNN), side by side.

Same weights, same inputs, one process, one GPU: sequence length 100, batch 1,
8 and 64, hidden 256 and 1024 (input size = hidden), forward (no grad) and
training (forward + backward of a sum). Times are medians of CUDA-event timed
repeats after warm-up (the first call compiles fastrnn's kernels); the ratio is
torch's time over fastrnn's (> 1: fastrnn is faster). Also reports the max abs
difference of the outputs.
"""

import json
import os
import statistics

import torch

from . import modules

T = 100
BATCHES = (1, 8, 64)
HIDDEN = (256, 1024)


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def pair(mode, hidden):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, mode)(hidden, hidden).cuda()
    ours = getattr(modules, mode)(hidden, hidden).cuda()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def forward_fn(model, x):
    def run():
        with torch.no_grad():
            return model(x)[0]

    return run


def training_fn(model, x):
    def run():
        model.zero_grad(set_to_none=True)
        x.grad = None
        model(x)[0].sum().backward()

    return run


def run(modes=("LSTM", "GRU", "RNN"), quick=False):
    """Rows ``dict(mode, hidden, batch, task, fastrnn_ms, torch_ms, ratio, max_abs_diff)``."""
    repeats = 3 if quick else 20
    rows = []
    for mode in modes:
        for hidden in HIDDEN:
            ours, theirs = pair(mode, hidden)
            for batch in BATCHES:
                x = torch.randn(T, batch, hidden, device="cuda", requires_grad=True)
                with torch.no_grad():
                    diff = (ours(x)[0] - theirs(x)[0]).abs().max().item()
                for task, make in (("forward", forward_fn), ("training", training_fn)):
                    f_ours, f_theirs = make(ours, x), make(theirs, x)
                    f_ours(), f_theirs()  # warm-up: compiles, fills caches
                    ours_ms = median_ms(f_ours, repeats)
                    theirs_ms = median_ms(f_theirs, repeats)
                    rows.append(
                        dict(
                            mode=mode,
                            hidden=hidden,
                            batch=batch,
                            task=task,
                            fastrnn_ms=ours_ms,
                            torch_ms=theirs_ms,
                            ratio=theirs_ms / ours_ms,
                            max_abs_diff=diff,
                        )
                    )
                    print(
                        f"{mode:5s} H={hidden:5d} B={batch:3d} {task:8s}  fastrnn "
                        f"{ours_ms:8.3f} ms  torch.nn (cuDNN) {theirs_ms:8.3f} ms  "
                        f"ratio {theirs_ms / ours_ms:5.2f}x  max|diff| {diff:.1e}",
                        flush=True,
                    )
    return rows


def main(quick=False, modes=("LSTM", "GRU", "RNN"), out="bench-results"):
    if not torch.cuda.is_available():
        print("fastrnn bench --gpu needs a CUDA build of torch and a GPU; none here")
        return 1
    import fastrnn

    if not fastrnn.cuda.is_available():
        print("fastrnn bench --gpu needs numba-cuda (pip install 'fastrnn[cuda]')")
        return 1
    print(f"# {torch.cuda.get_device_name()}, T={T}, float32; ratio = torch.nn time / fastrnn time")
    rows = run(modes, quick)
    if out:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "gpu.json")
        with open(path, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
        print(f"# wrote {path}")
    return 0
