"""Cold-start times: import fastrnn and run a first call, in a fresh process.

Each scenario runs in its own Python process, first with an empty NUMBA_CACHE_DIR
(cold: everything compiles), then again with the cache the first run filled (warm).
Targets (issue "Ship it"): first LSTM(32, 64) float32 forward and first step <= 5 s cold,
<= 0.5 s warm; first forward_train + backward <= 10 s cold.

    python tools/cold_start.py [--repeats 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

SCENARIO = """
import time
t0 = time.perf_counter()
import numpy as np
import fastrnn
m = fastrnn.LSTM(32, 64)
x = np.zeros((10, 1, 32), np.float32)
what = {what!r}
if what == "forward":
    m(x)
elif what == "step":
    m.step(x[0], m.initial_state(1))
else:
    y, state, tape = m.forward_train(x)
    m.backward(tape, np.ones_like(y))
print(time.perf_counter() - t0)
"""


def run(what, cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO.format(what=what)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs per scenario (median)")
    args = ap.parse_args(argv)
    print(f"{'first call':28} {'cold (s)':>9} {'warm (s)':>9}")
    for what, label in (
        ("forward", "LSTM(32, 64) forward"),
        ("step", "LSTM(32, 64) step"),
        ("train", "forward_train + backward"),
    ):
        cold, warm = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(run(what, cache))
                warm.append(run(what, cache))
        print(f"{label:28} {statistics.median(cold):9.2f} {statistics.median(warm):9.2f}")


if __name__ == "__main__":
    main()
