"""``fastrnn bench``: fastrnn vs torch.nn (and onnxruntime) on the same weights, side by side.

Every workload is measured for all engines in one process, on the same inputs, the
engines taking turns round by round; the table reports each engine's median time per
call, the speed-up of fastrnn over each other engine (> 1 means fastrnn is faster) and
the max abs difference of the outputs. Results also go to
``bench-results/latest.json`` and, when matplotlib is installed, a PNG chart.
"""

import io
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

import fastrnn
from fastrnn.progress import progress

from . import modules as frt_modules

MODES = ("LSTM", "GRU", "RNN")
TORCH = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}
TORCH_CELL = {"LSTM": torch.nn.LSTMCell, "GRU": torch.nn.GRUCell, "RNN": torch.nn.RNNCell}
CORE = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.RNN}
#: fastrnn on one thread, timed beside fastrnn on all (``--cores N``, N > 1).
ONE_THREAD = "fastrnn 1 thread"


@dataclass
class Result:
    model: str
    workload: str
    times: dict = field(default_factory=dict)  # engine -> seconds per call
    max_abs_diff: dict = field(default_factory=dict)  # engine -> vs fastrnn

    def speedup(self, engine):
        if engine not in self.times or "fastrnn" not in self.times:
            return None
        return self.times[engine] / self.times["fastrnn"]


#: Seconds to wait before timing an engine on more than one core, at least, and at most
#: while another thread of this process is still running: the previous engine's idle
#: threads must not steal the cores of the next. Measured here after a call:
#: onnxruntime's pool spins for about 55 ms, torch's OpenMP threads about 6 ms.
SETTLE = 0.05
SETTLE_MAX = 0.5


def _others_running():
    """Whether a thread of this process other than the caller is running (Linux:
    ``/proc/self/task/*/stat``); False where that cannot be told."""
    me = str(threading.get_native_id())
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    for task in tasks:
        if task == me:
            continue
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                if f.read().rsplit(") ", 1)[1].startswith("R"):
                    return True
        except (OSError, IndexError):
            continue
    return False


def settle():
    """Wait :data:`SETTLE` seconds, then until no other thread of this process is
    running (a peer's pool has stopped spinning), :data:`SETTLE_MAX` at most."""
    time.sleep(SETTLE)
    deadline = time.perf_counter() + SETTLE_MAX - SETTLE
    while _others_running() and time.perf_counter() < deadline:
        time.sleep(0.005)


def engine_times(fns, repeats, min_time=0.03):
    """Median per-call seconds of each engine (name -> call) over ``repeats`` rounds
    in which the engines take turns, each timing enough calls to last ``min_time``:
    drift on a noisy machine hits every engine alike. On more than one core each turn
    first waits (:func:`settle`), so a peer's spinning thread pool is idle."""
    multi = len(os.sched_getaffinity(0)) > 1
    numbers = {}
    for name, fn in fns.items():  # warm up, then calls per timing
        if multi:
            settle()
        fn()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < min_time / 5:
            fn()
            n += 1
        numbers[name] = max(1, n * 5)
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if multi:
                settle()
            number = numbers[name]
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(seen) for name, seen in samples.items()}


def onnx_session(module, args, names, threads=1):
    """An onnxruntime session for ``module`` exported with torch's TorchScript exporter."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    buf = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, input_names=names, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])


def _twins(mode, size, cell=False):
    torch.manual_seed(0)
    tm = (TORCH_CELL if cell else TORCH)[mode](size, size).eval()
    sd = {(k + "_l0" if cell else k): v for k, v in tm.state_dict().items()}
    m = CORE[mode](size, size)
    m.load_state_dict(sd)
    return m, tm


def stream(model, x):
    """A callable that advances one stream of ``model`` by a step on input ``x`` and
    returns the output: the state each step returns is the next step's input, as a
    service stepping a sequence does (the path ``step`` is built for)."""
    state = [model.initial_state(x.shape[0])]

    def advance():
        y, state[0] = model.step(x, state[0])
        return y

    return advance


def step_workload(mode, size, repeats, threads):
    """Streaming step at batch 1: fastrnn ``step`` vs nn.*Cell vs onnxruntime (seq_len 1)."""
    m, cell = _twins(mode, size, cell=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, size)).astype(np.float32)
    state = m.initial_state(1)
    xt = torch.from_numpy(x)
    hx = (torch.zeros(1, size),) * 2 if mode == "LSTM" else torch.zeros(1, size)
    res = Result(mode, f"step B=1 H={size}")

    def ours():  # from the zero state: the output every engine computes here
        return m.step(x, state)[0]

    with torch.inference_mode():
        ref = cell(xt, hx)
        ref = (ref[0] if mode == "LSTM" else ref).numpy()
    res.max_abs_diff["torch"] = float(np.abs(ours() - ref).max())
    fns = {"fastrnn": stream(m, x), "torch": lambda: cell(xt, hx)}
    layer = TORCH[mode](size, size).eval()
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    h0 = torch.zeros(1, 1, size)
    args = (xt[None], (h0, h0)) if mode == "LSTM" else (xt[None], h0)
    names = ["x", "h0", "c0"] if mode == "LSTM" else ["x", "h0"]
    session = onnx_session(layer, args, names, threads)
    if session is not None:
        feed = {"x": x[None], "h0": h0.numpy()}
        if mode == "LSTM":
            feed["c0"] = h0.numpy()
        res.max_abs_diff["onnxruntime"] = float(
            np.abs(session.run(None, feed)[0][0] - ours()).max()
        )
        fns["onnxruntime"] = lambda: session.run(None, feed)
    with torch.inference_mode():
        res.times.update(engine_times(fns, repeats))
    return res


def sequence_workload(mode, T, B, size, repeats, threads):
    """Whole-sequence inference: fastrnn vs nn.LSTM/GRU/RNN vs onnxruntime."""
    m, tm = _twins(mode, size)
    x = np.random.default_rng(0).standard_normal((T, B, size)).astype(np.float32)
    xt = torch.from_numpy(x)
    res = Result(mode, f"seq T={T} B={B} H={size}")
    with torch.inference_mode():
        ref = tm(xt)[0].numpy()
    fns = {"fastrnn": lambda: m(x), "torch": lambda: tm(xt)}
    if threads > 1:  # fastrnn's own scaling: the same call on one thread

        def one_thread():
            fastrnn.set_num_threads(1)
            try:
                m(x)
            finally:
                fastrnn.set_num_threads(threads)

        fns[ONE_THREAD] = one_thread
    y = m(x)[0]
    res.max_abs_diff["torch"] = float(np.abs(y - ref).max())
    session = onnx_session(tm, (xt,), ["x"], threads)
    if session is not None:
        feed = {"x": x}
        res.max_abs_diff["onnxruntime"] = float(np.abs(session.run(None, feed)[0] - y).max())
        fns["onnxruntime"] = lambda: session.run(None, feed)
    with torch.inference_mode():
        res.times.update(engine_times(fns, repeats))
    return res


def quantized_workload(mode, kind, size, repeats, threads, weights="int8"):
    """Opt-in quantized weights (``weights``: "int8", "bfloat16"): fastrnn quantized vs
    the float32 peers, torch.nn (its ``*Cell`` for a step) and onnxruntime;
    ``max_abs_diff`` is the quantized model against float32 torch.nn (the price of the
    speed). ``kind``: "step", "seq" (T=100, B=1) or "seq64" (T=100, B=64)."""
    m, tm = _twins(mode, size)
    q = m.quantize(weights)
    rng = np.random.default_rng(0)
    if kind == "step":
        x = rng.standard_normal((1, size)).astype(np.float32)
        cell = TORCH_CELL[mode](size, size).eval()
        cell.load_state_dict({k[: -len("_l0")]: v for k, v in tm.state_dict().items()})
        xt = torch.from_numpy(x)
        hx = (torch.zeros(1, size),) * 2 if mode == "LSTM" else torch.zeros(1, size)
        res = Result(mode, f"{weights} step H={size}")
        fns = {"fastrnn": stream(q, x), "torch": lambda: cell(xt, hx)}
        with torch.inference_mode():
            ref = cell(xt, hx)
            ref = (ref[0] if mode == "LSTM" else ref).numpy()
        res.max_abs_diff["torch"] = float(np.abs(q.step(x, None)[0] - ref).max())
        h0 = torch.zeros(1, 1, size)
        args = (xt[None], (h0, h0)) if mode == "LSTM" else (xt[None], h0)
        names = ["x", "h0", "c0"] if mode == "LSTM" else ["x", "h0"]
        feed = {"x": x[None], "h0": h0.numpy(), **({"c0": h0.numpy()} if mode == "LSTM" else {})}
    else:
        B = 64 if kind == "seq64" else 1
        x = rng.standard_normal((100, B, size)).astype(np.float32)
        xt = torch.from_numpy(x)
        res = Result(mode, f"{weights} seq T=100 B={B} H={size}")
        fns = {"fastrnn": lambda: q(x), "torch": lambda: tm(xt)}
        with torch.inference_mode():
            ref = tm(xt)[0].numpy()
        res.max_abs_diff["torch"] = float(np.abs(q(x)[0] - ref).max())
        args, names, feed = (xt,), ["x"], {"x": x}
    session = onnx_session(tm, args, names, threads)
    if session is not None:
        fns["onnxruntime"] = lambda: session.run(None, feed)
    with torch.inference_mode():
        res.times.update(engine_times(fns, repeats))
    return res


def training_workload(mode, T, B, size, repeats):
    """Forward + backward through the bridge vs torch.nn + autograd (same weights)."""
    torch.manual_seed(0)
    tm = TORCH[mode](size, size)
    m = getattr(frt_modules, mode)(size, size)
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

    res = Result(mode, f"train T={T} B={B} H={size}")
    res.max_abs_diff["torch"] = float((step(m)() - step(tm)()).abs().max())
    res.times.update(engine_times({"fastrnn": step(m), "torch": step(tm)}, repeats))
    return res


def cell_loop_workload(mode, T, B, size, repeats):
    """A ``*Cell`` stepped T times in a Python loop, then backward (the decoder pattern)."""
    torch.manual_seed(0)
    tm = getattr(torch.nn, mode + "Cell")(size, size)
    m = getattr(frt_modules, mode + "Cell")(size, size)
    m.load_state_dict(tm.state_dict())
    xs = torch.randn(T, B, size, requires_grad=True)

    def loop(cell):
        def run():
            xs.grad = None
            h = torch.zeros(B, size)
            state = (h, h) if mode == "LSTM" else h
            loss = 0
            for t in range(T):
                state = cell(xs[t], state)
                loss = loss + (state[0] if mode == "LSTM" else state).sum()
            loss.backward()
            return xs.grad

        return run

    res = Result(mode, f"cell loop T={T} B={B} H={size}")
    res.max_abs_diff["torch"] = float((loop(m)() - loop(tm)()).abs().max())
    res.times.update(engine_times({"fastrnn": loop(m), "torch": loop(tm)}, repeats))
    return res


def workloads(modes, hidden, full, repeats, threads):
    """(label, thunk) for the embedded default configuration (``--full``: more sizes)."""
    from .bench_attention import attention_layer_workload, attention_workload

    steps = sorted({64, hidden} | ({512} if full else set()))
    batches = (1, 8, 64) if full else (1, 64)
    jobs = []
    for mode in modes:
        for size in steps:
            jobs.append(lambda mode=mode, size=size: step_workload(mode, size, repeats, threads))
        for B in batches:
            jobs.append(
                lambda mode=mode, B=B: sequence_workload(mode, 100, B, hidden, repeats, threads)
            )
        for B in (1, 32):
            jobs.append(lambda mode=mode, B=B: training_workload(mode, 50, B, hidden, repeats))
        for B, size in ((1, 64), (1, 256), (32, 256)):
            jobs.append(
                lambda mode=mode, B=B, size=size: cell_loop_workload(mode, 20, B, size, repeats)
            )
    for backward in (False, True):
        for L in (16, 64, 128):
            for causal in (False, True):
                jobs.append(lambda L=L, c=causal, b=backward: attention_workload(L, c, b, repeats))
    jobs.append(lambda: attention_layer_workload("Attn", 1, repeats))
    for kind in ("additive", "dot", "general", "concat"):
        for B in (1, 32):
            jobs.append(lambda kind=kind, B=B: attention_layer_workload(kind, B, repeats))
    quantized = [
        lambda mode=mode, kind=kind, w=w: quantized_workload(
            mode, kind, hidden, repeats, threads, w
        )
        for w in ("int8", "bfloat16")
        for mode in modes
        for kind in ("step", "seq", "seq64")
    ]
    return jobs, quantized


def _fmt(seconds):
    if seconds is None:
        return "-"
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.3f} ms"


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def machine():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} core(s) used of {os.cpu_count()}"


def print_table(results):
    """One row per result; with several threads, a last column says how much faster
    fastrnn runs on them than on one."""
    scaling = any(ONE_THREAD in r.times for r in results)
    header = (
        f"{'model':5} {'workload':26} {'fastrnn':>11} {'torch.nn':>11} {'onnxrt':>11} "
        f"{'vs torch':>9} {'vs onnxrt':>9} {'max|diff|':>9}"
    ) + (f" {'vs 1 thr':>9}" if scaling else "")
    print(header)
    print("-" * len(header))
    for r in results:
        diff = max(r.max_abs_diff.values()) if r.max_abs_diff else float("nan")
        print(
            f"{r.model:5} {r.workload:26} {_fmt(r.times.get('fastrnn')):>11} "
            f"{_fmt(r.times.get('torch')):>11} {_fmt(r.times.get('onnxruntime')):>11} "
            f"{_ratio(r.speedup('torch')):>9} {_ratio(r.speedup('onnxruntime')):>9} "
            f"{diff:9.1e}" + (f" {_ratio(r.speedup(ONE_THREAD)):>9}" if scaling else "")
        )


def save_charts(results, int8_results, folder, title):
    """One PNG per comparison in ``folder``: ``vs_torch.png`` (float32 rows) and
    ``vs_onnxruntime.png`` (float32 rows, then fastrnn's int8 rows against float32
    onnxruntime). Returns the paths written (none without matplotlib)."""
    from fastrnn.charts import ratio_chart

    def labels(rows):
        return [f"{r.model} {r.workload}" for r in rows]

    charts = (
        ("vs_torch.png", "torch.nn", labels(results), [r.speedup("torch") for r in results]),
        (
            "vs_onnxruntime.png",
            "onnxruntime",
            labels(results + int8_results),
            [r.speedup("onnxruntime") for r in results + int8_results],
        ),
    )
    written = []
    for name, versus, rows, ratios in charts:
        path = ratio_chart(rows, ratios, os.path.join(folder, name), title, versus)
        if path:
            written.append(path)
    return written


def main(quick=False, cores=0, full=False, modes=MODES, hidden=256, out="bench-results"):
    repeats = 3 if quick else 7
    threads = cores or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    fastrnn.set_num_threads(threads)
    print(
        f"fastrnn {fastrnn.__version__} vs torch {torch.__version__}"
        f"{' and onnxruntime' if _has_ort() else ''} — float32, same weights, "
        f"median of {repeats} interleaved rounds; machine: {machine()}"
    )
    jobs, int8_jobs = workloads(modes, hidden, full, repeats, threads)
    results = [job() for job in progress(jobs + int8_jobs, desc="fastrnn bench")]
    print_table(results[: len(jobs)])
    print(
        "\nopt-in quantized weights (Model.quantize('int8'), quantize('bfloat16')) against "
        "the float32 peers (torch.nn: its *Cell for a step); max|diff| = quantized vs "
        "float32 torch.nn"
    )
    print_table(results[len(jobs) :])
    if out:
        os.makedirs(out, exist_ok=True)
        record = {
            "machine": machine(),
            "fastrnn": fastrnn.__version__,
            "torch": torch.__version__,
            "threads": threads,
            "results": [asdict(r) for r in results],
        }
        with open(os.path.join(out, "latest.json"), "w") as f:
            json.dump(record, f, indent=1)
        title = (
            f"{machine()}; fastrnn {fastrnn.__version__}, torch {torch.__version__}"
            f"{', onnxruntime ' + _ort_version() if _has_ort() else ''}; float32"
        )
        charts = save_charts(results[: len(jobs)], results[len(jobs) :], out, title)
        print(
            f"wrote {os.path.join(out, 'latest.json')}"
            + (f" and {', '.join(charts)}" if charts else "")
        )
    return results


def _ort_version():
    import onnxruntime

    return onnxruntime.__version__


def _has_ort():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
