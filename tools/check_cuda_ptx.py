"""Compile every ``fastrnn.cuda`` kernel to PTX for a real GPU target, without a GPU.

The simulator runs the kernels as Python, so it never checks that Numba's CUDA
compiler accepts them (typing, shared and dynamic shared arrays, grid sync).
This does, for float32 and float64 and the array layouts the drivers pass
(contiguous and strided views), targeting compute capability 9.0 (H100).

Needs numba-cuda and the CUDA toolkit's NVVM and NVRTC libraries (no driver, no
GPU). Exit status: 0 all compiled, 1 some failed, 77 toolkit not found.

    python tools/check_cuda_ptx.py
"""

import os
import sys

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)  # must precede numba.cuda

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402
from numba.cuda import dispatcher  # noqa: E402

from fastrnn.attention import _common_cuda as A  # noqa: E402
from fastrnn.attention import additive_cuda as AA  # noqa: E402
from fastrnn.cuda import linalg as L  # noqa: E402
from fastrnn.cuda import recurrence as R  # noqa: E402
from fastrnn.cuda import recurrence_backward as RB  # noqa: E402
from fastrnn.cuda import recurrence_forward as RF  # noqa: E402

CC = (9, 0)


class _Target:
    """Device functions ask the current device for its compute capability; there is none."""

    compute_capability = CC


dispatcher.get_current_device = _Target


def typed(args):
    """Numba types of example arguments (host arrays type like device arrays of the same
    layout)."""
    return tuple(numba.typeof(a) for a in args)


def cases(dt):
    """``(kernel, example arguments)`` for every kernel, in the layouts the drivers use."""
    f = np.dtype(dt).type

    def z(*s):
        return np.zeros(s, dt)

    T, B, H, P = 3, 2, 4, 4
    G = 4
    lens = np.ones(B, np.int64)
    y = z(T, B, 2 * P)[:, :, :P]  # strided view, as for a direction's output
    yield L._gemm_kernel, (z(3, 4), z(4, 5), z(3, 5), False, True, f(1), f(0), dt == np.float64)
    yield L._gemm_kernel, (z(3, 4), z(4, 5)[:, :2], z(3, 5)[:, 1:3], False, True, f(1), f(0), False)
    yield (
        L._batched_gemm_kernel,
        (z(2, 3, 4), z(2, 4, 5), z(2, 3, 5)[:, :2], True, False, f(1), f(1), False),
    )
    yield L._map3_kernel, (0, z(2, 3, 4), z(2, 3, 4), z(2, 3, 4), f(0))
    yield L._map3_kernel, (1, z(2, 3, 4)[:, :2], z(2, 3, 4), z(2, 3, 4)[:, 1:], f(0))
    yield L._swap01_kernel, (z(2, 3, 4), z(3, 2, 4))
    yield L._column_sum_kernel, (z(5, 4), z(4))
    tapes = (z(T, B, G * H), z(T, B, P), z(T, B, H))
    args = (
        0,
        0,
        z(T, B, G * H),
        z(P, G * H),
        1,
        z(G * H),
        z(G * H),
        z(0, P),
        z(2, B, P),
        z(B, H),
        z(B, H),
        y,
        lens,
        False,
        *tapes,
        2,
        2,
    )
    yield RF.forward_persistent, args
    yield RF.forward_phase, (0, 1) + args
    bargs = (
        0,
        0,
        *tapes[:1],
        z(T, B, P),
        z(T, B, H),
        z(G * H, P),
        1,
        z(0, H),
        False,
        y,
        z(2, B, P),
        z(B, H),
        z(T, B, G * H),
        z(T, B, G * H),
        z(1, 1, 1),
        z(1, 1, 1),
        lens,
        False,
        2,
        2,
    )
    yield RB.backward_persistent, bargs
    yield RB.backward_phase, (0, 1) + bargs
    yield R.seed_kernel, (z(B, P), z(B, P), y, 0, lens)
    b = np.zeros((0, 0, 0, 0), np.bool_)
    yield (
        A._softmax_kernel,
        (z(2, 3, 5)[:, :2], z(1, 2, 3, 5), b, False, f(1), 2, 0, z(2, 3), False),
    )
    yield (
        A._dscores_kernel,
        (z(2, 3, 5)[:, :2], z(2, 3, 5)[:, :2], z(2, 3, 4)[:, :2], z(2, 3, 4)[:, :2], f(1)),
    )
    yield (
        AA._additive_scores_kernel,
        (z(2, 4), z(2, 3, 4), z(4), z(4), np.zeros((2, 3), np.bool_), z(2, 1, 3)),
    )
    yield AA._additive_da_kernel, (z(2, 4), z(2, 3, 4), z(4), z(4), z(2, 1, 3), z(2, 3, 4))
    yield AA._additive_dv_kernel, (z(2, 4), z(2, 3, 4), z(4), z(2, 1, 3), z(4))
    yield A._sum_axis1_kernel, (z(2, 3, 4), z(2, 4))
    yield A._add_row_kernel, (z(2, 3), z(3))


def _toolkit_present():
    def probe(a):
        a[0] = 1

    try:
        cuda.compile_ptx(probe, "void(float32[:])", cc=CC)
    except Exception as exc:  # missing NVVM/NVRTC shows up as several exception types
        print(f"CUDA toolkit not usable for PTX compilation: {type(exc).__name__}: {exc}")
        return False
    return True


def main():
    if not _toolkit_present():
        return 77
    failures = 0
    for dt in (np.float32, np.float64):
        for kernel, args in cases(dt):
            name = kernel.py_func.__name__
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, typed(args), cc=CC)
                print(f"ok   {np.dtype(dt).name:8s} {name} ({len(ptx)} chars of PTX)")
            except Exception as exc:  # report every kernel, then fail
                failures += 1
                print(f"FAIL {np.dtype(dt).name:8s} {name}: {type(exc).__name__}: {exc}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
