"""The fastrnn command line: fastrnn bench, fastrnn warmup, fastrnn --version."""

import argparse
import os
import sys
import time

from ._version import __version__

DESCRIPTION = """\
fastrnn: Numba-compiled RNN, LSTM and GRU over NumPy arrays.

commands:
  bench    time fastrnn against torch.nn and onnxruntime on the same weights
  warmup   compile and cache the kernels ahead of time (for container images)

Run 'fastrnn COMMAND --help' for a command's options."""

BENCH_HELP = """\
Time fastrnn against torch.nn (and onnxruntime when installed) on the same weights,
side by side in one process, and print a table of times and ratios (other engine's
time / fastrnn's: above 1, fastrnn is faster). Needs torch: pip install 'fastrnn[torch]'.
Writes latest.json, vs_torch.png and vs_onnxruntime.png to the --out folder."""

WARMUP_HELP = """\
Compile fastrnn's CPU kernels for the cell types and dtypes asked for, so that later
processes start from Numba's cache instead of compiling. The cache goes where Numba
puts it: NUMBA_CACHE_DIR if set (use it in container images and read-only installs,
e.g. ENV NUMBA_CACHE_DIR=/var/cache/fastrnn, then RUN fastrnn warmup), else
__pycache__ beside the installed package."""


def _pin(cores):
    """Restrict this process (and threads it starts later) to the first ``cores`` CPUs."""
    if cores and hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[:cores])


def _choices(allowed):
    """An argparse type for a comma-separated subset of ``allowed``."""

    def parse(text):
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(allowed)}; got {text!r}"
            )
        return items

    return parse


def warmup(cells=("lstm", "gru", "rnn"), dtypes=("float32", "float64"), stream=None):
    """Compile (and cache) the CPU kernels of ``cells`` for ``dtypes``.

    Covers whole sequences at small and large batch, the streaming ``step``,
    ``forward_train``/``backward``, and int8 inference for float32.

    Returns
    -------
    seconds : dict
        ``(cell, dtype) -> seconds`` spent.
    """
    import numpy as np

    from . import GRU, LSTM, RNN
    from .engine import BLAS_MIN_BATCH
    from .progress import progress

    classes = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
    jobs = [(c, d) for c in cells for d in dtypes]
    seconds = {}
    for cell, dtype in progress(jobs, desc="fastrnn warmup", stream=stream):
        start = time.perf_counter()
        model = classes[cell](3, 4, dtype=dtype, seed=0)
        for batch in (1, BLAS_MIN_BATCH):
            x = np.zeros((2, batch, 3), dtype)
            y, _, tape = model.forward_train(x)
            model.backward(tape, np.ones_like(y))
        model.step(x[0], model.initial_state(batch))
        if dtype == "float32":
            quantized = model.quantize("int8")
            quantized(x[:, :1])
            quantized.step(x[0, :1], quantized.initial_state(1))
        seconds[cell, dtype] = time.perf_counter() - start
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="fastrnn",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter
    bench = sub.add_parser(
        "bench",
        help="fastrnn vs torch.nn and onnxruntime, side by side",
        description=BENCH_HELP,
        formatter_class=raw,
    )
    bench.add_argument(
        "--cores",
        type=int,
        default=0,
        help="pin to the first N CPUs before anything starts threads (default: all)",
    )
    bench.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    bench.add_argument("--full", action="store_true", help="more sizes and batches")
    bench.add_argument("--cell", choices=["lstm", "gru", "rnn", "all"], default="all")
    bench.add_argument("--hidden", type=int, default=256, help="hidden size (default 256)")
    bench.add_argument(
        "--gpu",
        action="store_true",
        help="fastrnn's CUDA kernels vs torch.nn on cuDNN (needs a GPU)",
    )
    bench.add_argument(
        "--out", default="bench-results", help="folder for latest.json and the charts ('' to skip)"
    )
    warm = sub.add_parser(
        "warmup",
        help="compile and cache the kernels ahead of time",
        description=WARMUP_HELP,
        formatter_class=raw,
    )
    warm.add_argument(
        "--cells",
        type=_choices(("lstm", "gru", "rnn")),
        default=["lstm", "gru", "rnn"],
        help="comma-separated cell types (default: lstm,gru,rnn)",
    )
    warm.add_argument(
        "--dtype",
        type=_choices(("float32", "float64")),
        default=["float32", "float64"],
        help="comma-separated dtypes (default: float32,float64)",
    )
    args = parser.parse_args(argv)
    if args.command == "warmup":
        seconds = warmup(args.cells, args.dtype)
        for (cell, dtype), s in seconds.items():
            print(f"{cell:5} {dtype:8} {s:6.1f} s")
        return 0
    _pin(args.cores)
    runner = _bench_runner("gpu" if args.gpu else "cpu")
    if runner is None:
        return 1
    modes = ("LSTM", "GRU", "RNN") if args.cell == "all" else (args.cell.upper(),)
    if args.gpu:
        return runner(quick=args.quick, modes=modes, out=args.out)
    runner(
        quick=args.quick,
        cores=args.cores,
        full=args.full,
        modes=modes,
        hidden=args.hidden,
        out=args.out,
    )
    return 0


def _bench_runner(name):
    """The comparison registered under ``name`` in the ``fastrnn.bench`` entry points (the
    PyTorch bridge registers ``cpu`` and ``gpu``), or None after saying what is missing."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="fastrnn.bench") if ep.name == name]
    if not found:
        print(
            f"fastrnn bench: no '{name}' comparison is installed (it comes with the "
            "PyTorch bridge: pip install 'fastrnn[torch]')",
            file=sys.stderr,
        )
        return None
    try:
        return found[0].load()
    except ImportError as exc:
        print(
            f"fastrnn bench needs torch to compare against ({exc}); "
            "install with: pip install 'fastrnn[torch]'",
            file=sys.stderr,
        )
        return None


if __name__ == "__main__":
    sys.exit(main())
