"""Device matrix products and the small array kernels the drivers need.

:func:`gemm` is ``C = alpha * op(A) @ op(B) + beta * C`` for 2-D device arrays of
any strides, ``op`` being the identity or the transpose (flags, not copies:
Numba's ``DeviceNDArray.T`` copies). It runs a shared-memory tiled
kernel, unless a faster product was installed with :func:`set_gemm` — the
PyTorch bridge installs torch's cuBLAS product when it runs on real GPUs.
"""

import contextvars
import math

import numpy as np
from numba import cuda, float32, float64

from . import _device, is_simulator

# Tile edge of the product kernel. The simulator runs every thread as a Python
# thread, so it gets small tiles to keep the test suite fast.
TILE = 4 if is_simulator() else 16
THREADS = 8 if is_simulator() else 256


@cuda.jit(device=True)
def _tile_pass(a, b, ta, tb, M, N, K, sa, sb, row, col, k0, acc):
    """Stage one TILE-wide slab of op(a)'s row block and op(b)'s column block in shared
    memory and accumulate its part of ``C[row, col]``."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    ka, kb = k0 + tx, k0 + ty
    if row < M and ka < K:
        sa[ty, tx] = a[ka, row] if ta else a[row, ka]
    else:
        sa[ty, tx] = 0
    if kb < K and col < N:
        sb[ty, tx] = b[col, kb] if tb else b[kb, col]
    else:
        sb[ty, tx] = 0
    cuda.syncthreads()
    for kk in range(TILE):
        acc += sa[ty, kk] * sb[kk, tx]
    cuda.syncthreads()
    return acc


@cuda.jit(device=True)
def _gemm_body(a, b, c, ta, tb, alpha, beta, wide, sa32, sb32, sa64, sb64):
    """One output tile of ``c = alpha * op(a) @ op(b) + beta * c`` (2-D operands)."""
    row = cuda.blockIdx.y * TILE + cuda.threadIdx.y
    col = cuda.blockIdx.x * TILE + cuda.threadIdx.x
    M, N = c.shape
    K = a.shape[0] if ta else a.shape[1]
    acc = alpha * 0
    for k0 in range(0, K, TILE):
        if wide:
            acc = _tile_pass(a, b, ta, tb, M, N, K, sa64, sb64, row, col, k0, acc)
        else:
            acc = _tile_pass(a, b, ta, tb, M, N, K, sa32, sb32, row, col, k0, acc)
    if row < M and col < N:
        if beta == 0:
            c[row, col] = alpha * acc
        else:
            c[row, col] = alpha * acc + beta * c[row, col]


@cuda.jit(cache=True)
def _gemm_kernel(a, b, c, ta, tb, alpha, beta, wide):
    """2-D product; ``wide`` selects float64 tiles (float32 otherwise)."""
    sa32 = cuda.shared.array((TILE, TILE), float32)
    sb32 = cuda.shared.array((TILE, TILE), float32)
    sa64 = cuda.shared.array((TILE, TILE), float64)
    sb64 = cuda.shared.array((TILE, TILE), float64)
    _gemm_body(a, b, c, ta, tb, alpha, beta, wide, sa32, sb32, sa64, sb64)


@cuda.jit(cache=True)
def _batched_gemm_kernel(a, b, c, ta, tb, alpha, beta, wide):
    """3-D (batched) product, one batch entry per ``blockIdx.z``."""
    sa32 = cuda.shared.array((TILE, TILE), float32)
    sb32 = cuda.shared.array((TILE, TILE), float32)
    sa64 = cuda.shared.array((TILE, TILE), float64)
    sb64 = cuda.shared.array((TILE, TILE), float64)
    z = cuda.blockIdx.z
    _gemm_body(a[z], b[z], c[z], ta, tb, alpha, beta, wide, sa32, sb32, sa64, sb64)


def tiled_gemm(a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """The built-in product kernel (see :func:`gemm`); 2-D or batched 3-D operands."""
    M, N = c.shape[c.ndim - 2 :]
    if M == 0 or N == 0 or c.size == 0:
        return c
    scalar = c.dtype.type
    blocks = (math.ceil(N / TILE), math.ceil(M / TILE))
    kernel = _gemm_kernel
    if c.ndim == 3:
        blocks, kernel = blocks + (c.shape[0],), _batched_gemm_kernel
    _device.launch(
        kernel,
        blocks,
        (TILE, TILE),
        a,
        b,
        c,
        trans_a,
        trans_b,
        scalar(alpha),
        scalar(beta),
        c.dtype == np.float64,
    )
    return c


_DEFAULT = [tiled_gemm]  # set_gemm's process-wide choice
_CURRENT = contextvars.ContextVar("fastrnn_cuda_gemm", default=None)  # use_gemm's


def gemm(a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """``c[:] = alpha * op(a) @ op(b) + beta * c`` on the device; returns ``c``.

    ``op(a)`` (M, K), ``op(b)`` (K, N), ``c`` (M, N): 2-D device arrays of one dtype,
    any strides, or 3-D with a leading batch axis (one product per entry); ``op``
    transposes the last two axes where ``trans_*`` is set. ``beta=0`` ignores
    ``c``'s contents (it may be uninitialised).
    """
    ka = a.shape[a.ndim - 2] if trans_a else a.shape[a.ndim - 1]
    if ka == 0:  # empty sum: only c's scaling is left
        return scale(c, beta)
    fn = _CURRENT.get() or _DEFAULT[0]
    return fn(a, b, c, alpha, beta, trans_a, trans_b)


class use_gemm:
    """Context manager: device products inside the block go through
    ``fn(a, b, c, alpha, beta, trans_a, trans_b)`` (this thread/context only)."""

    __slots__ = ("fn", "token")

    def __init__(self, fn):
        self.fn = fn
        self.token = None

    def __enter__(self):
        self.token = _CURRENT.set(self.fn)
        return self.fn

    def __exit__(self, *exc):
        _CURRENT.reset(self.token)
        return False


def set_gemm(fn):
    """Route the device products through ``fn(a, b, c, alpha, beta, trans_a, trans_b)``
    in the whole process; returns the previous function."""
    previous = _DEFAULT[0]
    _DEFAULT[0] = fn
    return previous


# ----------------------------------------------------------------------------- elementwise


def blocks(n):
    return max(1, min(math.ceil(n / THREADS), 1024))


SCALE, MULTIPLY, ADD, COPY = range(4)


@cuda.jit(cache=True)
def _map3_kernel(op, out, a, b, alpha):
    """Elementwise over 3-D arrays of any strides: ``out *= alpha`` (SCALE; alpha == 0
    writes zeros, never NaN), ``out = a * b`` (MULTIPLY), ``out += a`` (ADD), ``out = a``
    (COPY)."""
    A, B, C = out.shape
    for k in range(cuda.grid(1), A * B * C, cuda.gridsize(1)):
        i, r = k // (B * C), k % (B * C)
        j, m = r // C, r % C
        if op == SCALE:
            out[i, j, m] = 0 if alpha == 0 else out[i, j, m] * alpha
        elif op == MULTIPLY:
            out[i, j, m] = a[i, j, m] * b[i, j, m]
        elif op == ADD:
            out[i, j, m] += a[i, j, m]
        else:
            out[i, j, m] = a[i, j, m]


@cuda.jit(cache=True)
def _column_sum_kernel(a, out):
    """out[j] = sum_i a[i, j]."""
    for j in range(cuda.grid(1), a.shape[1], cuda.gridsize(1)):
        acc = a[0, j] * 0
        for i in range(a.shape[0]):
            acc += a[i, j]
        out[j] = acc


def _as3(x):
    """A 3-D view of a 1-, 2- or 3-D device array (strided views included), for the
    elementwise kernels: leading axes of length 1 are added, nothing is copied."""
    if x.ndim == 3:
        return x
    lead = (1,) * (3 - x.ndim)
    if x.is_c_contiguous():
        return x.reshape(lead + tuple(x.shape))
    if is_simulator():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(x._ary[(None,) * len(lead)])
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(
        lead + tuple(x.shape),
        (0,) * len(lead) + tuple(x.strides),
        x.dtype,
        gpu_data=x.gpu_data,
        stream=x.stream,
    )


def zeros(shape, dtype):
    out = _device.empty(shape, dtype)
    return scale(out, 0)


def _map(op, out, a=None, b=None, alpha=0):
    if out.size:
        o = _as3(out)
        _device.launch(
            _map3_kernel,
            blocks(out.size),
            THREADS,
            op,
            o,
            o if a is None else _as3(a),
            o if b is None else _as3(b),
            out.dtype.type(alpha),
        )
    return out


def scale(x, alpha):
    """``x *= alpha`` in place (``alpha == 0``: zeros, whatever ``x`` held)."""
    return _map(SCALE, x, alpha=alpha)


def multiply(a, b, out=None):
    return _map(MULTIPLY, _device.empty(a.shape, a.dtype) if out is None else out, a, b)


def add_into(out, a):
    return _map(ADD, out, a)


def copy(src, out=None):
    """Copy of a 1-3-D device array or view (into ``out`` if given, which may be a view)."""
    return _map(COPY, _device.empty(src.shape, src.dtype) if out is None else out, src)


def reshaped(a, shape):
    """``a`` with another shape, viewed when contiguous, else copied first."""
    return (a if a.is_c_contiguous() else copy(a)).reshape(tuple(shape))


def swap01(x):
    """Contiguous (B, A, C) copy of a 3-D (A, B, C) device array."""
    A, B, C = x.shape
    out = _device.empty((B, A, C), x.dtype)
    if out.size:
        _device.launch(_swap01_kernel, blocks(out.size), THREADS, x, out)
    return out


@cuda.jit(cache=True)
def _swap01_kernel(src, out):
    A, B, C = out.shape
    for k in range(cuda.grid(1), A * B * C, cuda.gridsize(1)):
        i, r = k // (B * C), k % (B * C)
        j, m = r // C, r % C
        out[i, j, m] = src[j, i, m]


def transpose(a):
    """Contiguous copy of a 2-D device array's transpose."""
    out = _device.empty((a.shape[1], a.shape[0]), a.dtype)
    if out.size:
        _device.launch(
            _swap01_kernel,
            blocks(out.size),
            THREADS,
            a.reshape((a.shape[0], a.shape[1], 1)),
            out.reshape(out.shape + (1,)),
        )
    return out


def column_sum(a, out):
    """``out[:] = a.sum(axis=0)`` for 2-D ``a``."""
    if out.size:
        if a.shape[0] == 0:
            return scale(out, 0)
        _device.launch(_column_sum_kernel, blocks(out.size), THREADS, a, out)
    return out
