"""Cold-start times: import fastrnn and run a first call, in a fresh process.

Each scenario runs in its own Python process, first with an empty NUMBA_CACHE_DIR
(cold: everything compiles), then three times with the cache the first run filled (warm),
each alternating with a process that only imports NumPy and Numba (the floor under any
warm start, printed beside it). Medians over the repeats.
Targets (issue "Ship it"): first LSTM(32, 64) float32 forward and first step <= 5 s cold,
<= 0.5 s warm; first forward_train + backward <= 10 s cold.

    python tools/cold_start.py [--repeats 3] [--wheel]

By default the scenarios run with this interpreter (an editable install imports through
its import hook, which adds a few tens of ms). ``--wheel`` first builds the wheel and
installs it with the core dependencies only (no torch) into a fresh virtual environment,
which is what a service deploys, and measures there.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

FLOOR = """
import time
t0 = time.perf_counter()
import numpy, numba
print(time.perf_counter() - t0)
"""

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


def run(python, code, cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run(
        [python, "-c", code],
        env=env,
        cwd=cache,  # outside the checkout: the installed package is what is imported
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[-1])


def wheel_python(work):
    """Build the wheel, install it with the core dependencies into a fresh virtual
    environment under ``work``, and return that environment's Python."""
    dist, venv = work / "dist", work / "venv"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", dist, ROOT],
        check=True,
        capture_output=True,
    )
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = str(venv / "bin" / "python")
    wheel = next(dist.glob("*.whl"))
    constraints = ROOT / "requirements-dev.txt"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "-c", constraints, wheel],
        check=True,
        capture_output=True,
    )
    return python


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs per scenario (median)")
    ap.add_argument(
        "--wheel", action="store_true", help="measure an installed wheel (core deps only)"
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        python = wheel_python(pathlib.Path(work)) if args.wheel else sys.executable
        header = f"{'first call':28} {'cold (s)':>9} {'warm (s)':>9}"
        print(f"{header} {'import numpy, numba (s)':>24}")
        for what, label in (
            ("forward", "LSTM(32, 64) forward"),
            ("step", "LSTM(32, 64) step"),
            ("train", "forward_train + backward"),
        ):
            code = SCENARIO.format(what=what)
            cold, warm, floor = [], [], []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as cache:
                    cold.append(run(python, code, cache))
                    for _ in range(3):
                        floor.append(run(python, FLOOR, cache))
                        warm.append(run(python, code, cache))
            median = statistics.median
            print(f"{label:28} {median(cold):9.2f} {median(warm):9.2f} {median(floor):24.2f}")


if __name__ == "__main__":
    main()
