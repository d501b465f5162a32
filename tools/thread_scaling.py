"""fastrnn on N threads against fastrnn on one: the same calls, interleaved, medians.

    taskset -c 0,1 python tools/thread_scaling.py [--threads 2] [--repeats 15]

For every cell and workload (inference sequences of T=100 at several batches and
hidden sizes, and forward_train + backward), prints the median time on one thread, on
``--threads``, and the ratio (one thread's time / N threads': above 1, the threads
help). Repetitions alternate between the two counts, so drift on a noisy machine hits
both alike.
"""

import argparse
import statistics
import time

import numpy as np

import fastrnn

WORKLOADS = (  # (label, batch, hidden, training, bidirectional)
    ("seq B=1 H=256", 1, 256, False, False),
    ("seq B=1 H=512", 1, 512, False, False),
    ("bidir seq B=1 H=256", 1, 256, False, True),
    ("seq B=8 H=256", 8, 256, False, False),
    ("seq B=64 H=256", 64, 256, False, False),
    ("train B=32 H=256", 32, 256, True, False),
)


def _call(model, x, training):
    if not training:
        return lambda: model(x)

    def step():
        y, _, tape = model.forward_train(x)
        model.backward(tape, np.ones_like(y))

    return step


def measure(cell, batch, hidden, training, bidirectional, threads, repeats, T=100):
    """Median seconds per call on one thread and on ``threads``."""
    model = getattr(fastrnn, cell)(hidden, hidden, bidirectional=bidirectional)
    x = np.random.default_rng(0).standard_normal((T, batch, hidden)).astype(np.float32)
    call = _call(model, x, training)
    times = {1: [], threads: []}
    for n in times:  # compile and warm up both
        fastrnn.set_num_threads(n)
        call()
    for _ in range(repeats):
        for n, seen in times.items():
            fastrnn.set_num_threads(n)
            start = time.perf_counter()
            call()
            seen.append(time.perf_counter() - start)
    return statistics.median(times[1]), statistics.median(times[threads])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads to compare (2)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (15)")
    args = parser.parse_args(argv)
    n = args.threads
    print(f"{'cell':5} {'workload':20} {'1 thread':>10} {f'{n} threads':>10} {'ratio':>7}")
    for cell in ("LSTM", "GRU", "RNN"):
        for label, *workload in WORKLOADS:
            one, many = measure(cell, *workload, n, args.repeats)
            print(f"{cell:5} {label:20} {one * 1e3:8.2f}ms {many * 1e3:8.2f}ms {one / many:6.2f}x")


if __name__ == "__main__":
    main()
