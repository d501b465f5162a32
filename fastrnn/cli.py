"""The ``fastrnn`` command line.

``fastrnn bench`` prints a side-by-side table: fastrnn against torch.nn on the
same weights (when the PyTorch bridge and torch are installed), with the max
abs difference of the outputs, the time per call and the speed ratio.
The comparison lives in ``fastrnn_torch.bench`` so the core never imports torch.
"""

import argparse
import os
import sys


def _pin(cores):
    """Restrict this process (and threads it starts later) to the first ``cores`` CPUs."""
    if cores and hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[:cores])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastrnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="fastrnn vs torch.nn, same weights, side by side")
    bench.add_argument("--cores", type=int, default=0,
                       help="pin to the first N CPUs before anything starts threads "
                            "(default: all)")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    bench.add_argument("--full", action="store_true", help="more sizes and batches")
    bench.add_argument("--cell", choices=["lstm", "gru", "rnn", "all"], default="all")
    bench.add_argument("--hidden", type=int, default=256, help="hidden size (default 256)")
    bench.add_argument("--gpu", action="store_true",
                       help="fastrnn's CUDA kernels vs torch.nn on cuDNN (needs a GPU)")
    bench.add_argument("--out", default="bench-results",
                       help="folder for latest.json and ratios.png ('' to skip)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        _pin(args.cores)
        try:
            from fastrnn_torch import bench as runner
        except ImportError as exc:
            print(f"fastrnn bench needs torch to compare against ({exc}); "
                  "install with: pip install 'fastrnn[torch]'", file=sys.stderr)
            return 1
        modes = ("LSTM", "GRU", "RNN") if args.cell == "all" else (args.cell.upper(),)
        if args.gpu:
            from fastrnn_torch import bench_gpu
            return bench_gpu.main(quick=args.quick, modes=modes, out=args.out)
        runner.main(quick=args.quick, cores=args.cores, full=args.full, modes=modes,
                    hidden=args.hidden, out=args.out)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
