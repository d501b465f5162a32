"""The floor under fastrnn's batch-1 rows: the least time the bytes and the multiply-adds
of a call take on this core, measured, beside fastrnn's time for the call.

A batch-1 ``step`` must read every input and recurrent weight once (2 MB for an H=256
LSTM in float32), and a batch-1 sequence must read ``W_hh`` once per time step, after
one product of the whole input with ``W_ih``. The floor of a row is:

- bytes: a Numba loop that only sums the weights, contiguous, as a stream of calls that
  alternate direction as the batch-1 kernels do (so the weights sit where such a stream
  leaves them: in L2 when they fit, else partly in L2, the rest in L3); the weights are
  read once per step, nothing more;
- multiply-adds: the input projection's ``T·I·G·H`` at the best rate this core reaches
  on a 1024x1024 float32 product, single-threaded: NumPy's OpenBLAS or fastrnn's own
  panels (``fastrnn.tile_gemm``), whichever is faster here.

``floor = step bytes`` for ``step``; ``T x (W_hh bytes) + projection FLOPs`` for a
sequence. A row whose target is missed can be closed by the issue's rule when fastrnn
is within 1.1x of its floor and no peer is faster on it (peers: ``fastrnn bench``).

    taskset -c 0 python tools/floor.py [--hidden 256] [--repeats 7]
"""

import argparse
import statistics
import time

import numba
import numpy as np

import fastrnn
from fastrnn import threads
from fastrnn._jit import KERNEL_OPTIONS
from fastrnn.tile_gemm import panel_matmul


# The kernels' options, not their disk cache: a tool loaded by path (as the tests do) is
# a module Numba cannot import again to load a cached function.
@numba.njit(**KERNEL_OPTIONS)
def _read_all(flat, back):
    """The sum of every element of ``flat`` (a weight matrix's elements, contiguous): each
    read once, vectorised; with ``back`` in blocks of 16 KB from last to first (each
    block forwards), as the batch-1 kernels walk their tiles when they alternate
    direction between calls: each read starts where the last one ended, in L2."""
    acc = flat[0] - flat[0]
    n = flat.shape[0]
    block = 4096
    blocks = (n + block - 1) // block
    for i in range(blocks):
        b = blocks - 1 - i if back else i
        part = flat[b * block : min(n, (b + 1) * block)]
        for j in range(part.shape[0]):
            acc += part[j]
    return acc


def _reader(*weights):
    """A call that reads ``weights`` once each, in the order opposite to the last call's."""
    flats = [np.ascontiguousarray(w).ravel() for w in weights]
    calls = [0]

    def read():
        back = calls[0] % 2 == 1
        calls[0] += 1
        for flat in flats[::-1] if back else flats:
            _read_all(flat, back)

    return read


def _median_seconds(fn, repeats, calls):
    return _interleaved({"fn": (fn, calls)}, repeats)["fn"]


def _interleaved(fns, repeats):
    """Median seconds per call of each ``name -> (fn, calls)``, the functions taking
    turns round by round (this VM's speed drifts from minute to minute: a floor
    measured apart from the call it bounds could land in another phase)."""
    for fn, _ in fns.values():
        fn()
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, calls) in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            runs[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(seen) for name, seen in runs.items()}


def _gemm_rate(repeats):
    """Multiply-adds per second of the faster of NumPy's BLAS and fastrnn's panels on a
    1024x1024 float32 product, one thread."""
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    out = np.empty_like(a)
    with threads.single_blas():
        seconds = _interleaved(
            {
                "blas": (lambda: np.matmul(a, a, out=out), 3),
                "panels": (lambda: panel_matmul(a, a, out), 3),
            },
            repeats,
        )
    return 1024**3 / min(seconds.values())


def rows(hidden, repeats):
    """``(label, floor seconds, fastrnn seconds)`` per batch-1 row, every cell."""
    rate = _gemm_rate(repeats)
    T = 100
    out = []
    for cell in ("LSTM", "GRU", "RNN"):
        m = getattr(fastrnn, cell)(hidden, hidden)
        x = np.random.default_rng(0).standard_normal((T, 1, hidden)).astype(np.float32)
        w_ih_t, _, w_hh_t, _ = fastrnn.engine.step_weights(m.spec, m.state_dict())[0][:4]

        state = [m.initial_state(1)]

        def advance(m=m, x=x, state=state):
            _, state[0] = m.step(x[0], state[0])

        projection = T * w_ih_t.shape[0] * w_ih_t.shape[1] / rate
        times = _interleaved(
            {
                "step": (advance, 200),
                "read step": (_reader(w_ih_t, w_hh_t), 200),
                "seq": (lambda m=m, x=x: m(x), 5),
                "read recurrent": (_reader(w_hh_t), 200),
            },
            repeats,
        )
        out.append((f"{cell:5} step B=1 H={hidden}", times["read step"], times["step"]))
        floor = T * times["read recurrent"] + projection
        out.append((f"{cell:5} seq T={T} B=1 H={hidden}", floor, times["seq"]))
    return out, rate


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hidden", type=int, default=256, help="hidden and input size")
    ap.add_argument("--repeats", type=int, default=7, help="medians of this many runs")
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(1)
    table, rate = rows(args.hidden, args.repeats)
    print(f"product rate (1024x1024 float32, 1 thread): {rate / 1e9:.1f} G multiply-adds/s")
    print(f"{'row':28} {'floor':>10} {'fastrnn':>10} {'fastrnn/floor':>14}")
    for label, floor, ours in table:
        print(f"{label:28} {floor * 1e6:8.1f}us {ours * 1e6:8.1f}us {ours / floor:13.2f}x")


if __name__ == "__main__":
    main()
