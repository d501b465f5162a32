"""Small dense products for the recurrence, written to vectorise without BLAS.

Numba's ``np.dot`` needs SciPy, which the core does not depend on. For the
per-step recurrent product at small batch, a loop over contiguous rows of
the weight matrix is as fast as BLAS (the cost is reading the weights); large
batches go through NumPy's BLAS from the Python-level driver instead.
"""

import contextvars
import functools

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import threads
from ._jit import kernel

#: Fewest rows of ``a`` per thread in :func:`numpy_gemm`, and fewest multiply-adds per
#: thread (``rows * K * N``) worth splitting a product for: waking an idle worker costs
#: a few hundred microseconds on a VM (a T=100, H=256 LSTM's input projection, 26 M,
#: was slower split in two).
GEMM_MIN_ROWS = 32
GEMM_MIN_WORK = 1 << 24


#: Fewest rows of ``a``, and multiply-adds, from which :func:`numpy_gemm` makes a
#: product on fastrnn's panels where those are its choice (:func:`panels_chosen`).
PANEL_MIN_ROWS = 8
PANEL_MIN_WORK = 1 << 18


@functools.lru_cache(maxsize=1)
def panels_chosen():
    """Whether the models' large float products run on fastrnn's own panels
    (:func:`fastrnn.tile_gemm.panel_matmul`) rather than NumPy's BLAS: on a CPU with
    AVX-512 whose NumPy BLAS does not use it (OpenBLAS's AVX2 kernels on AMD's Zen 4 and
    5), where the panels ran 1.3-1.8x faster (see ``panel_matmul``). Elsewhere BLAS:
    on an AVX2 core OpenBLAS was the faster for products of up to 50 rows."""
    from ._jit import VECTOR_BYTES

    return VECTOR_BYTES == 64 and not threads.blas_core().startswith(AVX512_BLAS)


#: OpenBLAS kernel families that use AVX-512 (:func:`fastrnn.threads.blas_core`).
AVX512_BLAS = ("skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5")


def numpy_gemm(a, b, out=None):
    """``a @ b`` through NumPy's BLAS, or fastrnn's panels where they are faster
    (:func:`panels_chosen`): the default matrix product of the models, on fastrnn's
    threads (:func:`fastrnn.set_num_threads`): the rows of ``a`` are split between
    them, each piece a single-threaded product. BLAS's own thread pool is never used:
    its threads spin after each call, on the cores fastrnn's other threads are about to
    use."""
    if a.ndim != 2 or b.ndim != 2:  # stacks of products (attention): one call
        with threads.single_blas():
            return np.matmul(a, b, out=out)
    M, K = a.shape
    N = b.shape[1]
    rows = max(GEMM_MIN_ROWS, GEMM_MIN_WORK // max(K * N, 1))
    pieces = threads.split(M, rows)
    if out is None:
        out = np.empty((M, N), np.result_type(a, b))
    matmul = np.matmul
    if (
        M >= PANEL_MIN_ROWS
        and M * K * N >= PANEL_MIN_WORK
        and a.dtype == b.dtype == out.dtype
        and a.dtype.kind == "f"
        and out.flags.c_contiguous
        and panels_chosen()
    ):
        from .tile_gemm import panel_matmul

        matmul = panel_matmul
    if len(pieces) == 1:
        with threads.single_blas():
            matmul(a, b, out=out)
            return out

    def piece(r0, r1):
        matmul(a[r0:r1], b, out=out[r0:r1])

    threads.run(piece, pieces)
    return out


_DEFAULT = [numpy_gemm]  # set_gemm's process-wide choice
_CURRENT = contextvars.ContextVar("fastrnn_gemm", default=None)  # use_gemm's, per context


def gemm(a, b, out=None):
    """``a @ b`` (2-D) with the product function in force: the one :func:`use_gemm` set in
    this thread/context, else the process-wide one (:func:`set_gemm`, NumPy by default)."""
    fn = _CURRENT.get()
    return (fn or _DEFAULT[0])(a, b, out=out)


class use_gemm:
    """Context manager: fastrnn's large products inside the block go through
    ``fn(a, b, out=None)``, in this thread (or asyncio task) only.

    The PyTorch bridge runs the kernels inside ``use_gemm(torch's product)`` so a
    process that uses torch runs one BLAS thread pool, not two (two pools spinning on
    the same cores slow each other several-fold); importing the bridge changes nothing
    for code that calls fastrnn directly.
    """

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
    """Route fastrnn's large matrix products through ``fn(a, b, out=None)`` in the whole
    process (unless a :class:`use_gemm` block says otherwise); returns the previous one."""
    previous = _DEFAULT[0]
    _DEFAULT[0] = fn
    return previous


@kernel
def _rows_nt(a, w, out, n):
    """``out[:, n : n + 8] = a @ w[n : n + 8].T``: eight dot products per batch row,
    each weight row read once, eight independent sums (vectorised along ``k``)."""
    B, K = a.shape
    w0, w1, w2, w3, w4, w5, w6, w7 = (
        w[n], w[n + 1], w[n + 2], w[n + 3], w[n + 4], w[n + 5], w[n + 6], w[n + 7]
    )  # fmt: skip
    zero = np.float32(0)  # (a float32 zero: sums of float64 arrays unify to float64)
    for b in range(B):
        ab = a[b]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
        for k in range(K):  # from 0, not from a first product: no peeled, unaligned start
            x = ab[k]
            s0 += x * w0[k]
            s1 += x * w1[k]
            s2 += x * w2[k]
            s3 += x * w3[k]
            s4 += x * w4[k]
            s5 += x * w5[k]
            s6 += x * w6[k]
            s7 += x * w7[k]
        ob = out[b]
        ob[n], ob[n + 1], ob[n + 2], ob[n + 3] = s0, s1, s2, s3
        ob[n + 4], ob[n + 5], ob[n + 6], ob[n + 7] = s4, s5, s6, s7


@kernel
def _row_nt(a, w, out, n):
    """``out[:, n] = a @ w[n]``."""
    B, K = a.shape
    wn = w[n]
    for b in range(B):
        acc = np.float32(0)
        for k in range(K):
            acc += a[b, k] * wn[k]
        out[b, n] = acc


@kernel
def matmul_nt(a, w, out):
    """``out[:] = a @ w.T`` for ``a`` (B, K), ``w`` (N, K), ``out`` (B, N), all C-contiguous.

    Eight rows of ``w`` per pass, each read from memory once for every batch row (a
    torch-layout weight needs no transposed copy). Measured against :func:`matmul_t` on
    the stored transpose (B=1, float32): as fast at 1 MB, 1.5x faster from L2; the
    earlier one-row loop that started its sum from the first product was 1.5x slower.
    """
    N = w.shape[0]
    n = 0
    while n + 8 <= N:
        _rows_nt(a, w, out, n)
        n += 8
    while n < N:
        _row_nt(a, w, out, n)
        n += 1


@kernel
def gate_columns(a, start, stop, gates, hidden, out):
    """``out[r, g·n + j] = a[r, g·hidden + start + j]`` for ``j < n = stop - start``: the
    columns of hidden units ``start:stop`` of every gate, side by side (a thread team
    member's slice of a layer's weights). One pass of row copies: NumPy's concatenate of
    the column slices copied them a short row at a time, 10 times slower here."""
    n = stop - start
    for r in range(a.shape[0]):
        ar, orow = a[r], out[r]
        for g in range(gates):
            src = ar[g * hidden + start : g * hidden + stop]
            dst = orow[g * n : g * n + n]
            for j in range(n):  # (slices: no negative-index wraparound per element)
                dst[j] = src[j]


@kernel
def commit_rows(h, h_new, y_t, t, lengths):
    """Take ``h_new`` into ``h`` and ``y_t`` for rows still running at step ``t``.

    Rows whose sequence has ended (``t >= lengths[n]``) keep their state and get
    a zero output, which is torch's packed-sequence behaviour.
    """
    B, P = h.shape
    for n in range(B):
        if t < lengths[n]:
            for j in range(P):
                h[n, j] = h_new[n, j]
                y_t[n, j] = h_new[n, j]
        else:
            for j in range(P):
                y_t[n, j] = 0


@kernel
def matmul2_nt(a, w, out, b, v, out2):
    """``out[:] = a @ w.T`` and ``out2[:] = b @ v.T`` (same row count), block by block of
    eight rows of ``w`` and ``v``: a streaming step reads both weight matrices once."""
    N = w.shape[0]
    n = 0
    while n + 8 <= N:
        _rows_nt(a, w, out, n)
        _rows_nt(b, v, out2, n)
        n += 8
    while n < N:
        _row_nt(a, w, out, n)
        _row_nt(b, v, out2, n)
        n += 1


@kernel
def matmul_tn(a, b, out):
    """``out[:] = a.T @ b`` for ``a`` (B, N), ``b`` (B, K), ``out`` (N, K), all
    C-contiguous: a weight gradient from a few rows (a sum of B outer products)."""
    B, N = a.shape
    for n in range(N):
        on = out[n]
        s = a[0, n]
        b0 = b[0]
        for k in range(on.shape[0]):
            on[k] = s * b0[k]
        for r in range(1, B):
            s, br = a[r, n], b[r]
            for k in range(on.shape[0]):
                on[k] += s * br[k]


@kernel
def column_sums(a, out):
    """``out[:] = a.sum(0)`` for ``a`` (B, N) C-contiguous: a bias gradient."""
    B, N = a.shape
    for n in range(N):
        out[n] = a[0, n]
    for r in range(1, B):
        for n in range(N):
            out[n] += a[r, n]


@intrinsic
def _float32_from_bfloat16_bits(typingctx, bits):
    """The float32 whose upper 16 bits are ``bits`` (a uint16 holding a bfloat16): a
    widening shift, which vectorises."""
    if not isinstance(bits, types.Integer) or bits.bitwidth != 16 or bits.signed:
        return None

    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def array_at(typingctx, address, shape, like):
    """The C-contiguous array of ``shape`` (a tuple of ints) at ``address`` (an int), of
    the dtype of the scalar ``like`` (a float, or an integer such as a mask's uint8; in
    kernels).

    A view of memory someone else owns (a torch tensor's ``data_ptr()``), made in the
    kernel: no reference counting, no NumPy object. The caller vouches that the memory
    holds that many elements and outlives the call.
    """
    if not (
        isinstance(address, types.Integer)
        and isinstance(shape, types.UniTuple)
        and isinstance(shape.dtype, types.Integer)
        and isinstance(like, (types.Float, types.Integer))
    ):
        return None
    ndim = shape.count
    array_type = types.Array(like, ndim, "C")

    def codegen(context, builder, signature, args):
        # Imported here, when a kernel compiles: importing it with fastrnn would add
        # ~40 ms to every warm start (it imports Numba's string support).
        from numba.np.arrayobj import populate_array

        addr, dims, _ = args
        dims = cgutils.unpack_tuple(builder, dims, ndim)  # int64 (the signature's cast)
        itemsize = context.get_constant(
            types.intp, context.get_abi_sizeof(context.get_data_type(like))
        )
        strides, step = [], itemsize
        for d in reversed(dims):  # C order: the last axis is contiguous
            strides.insert(0, step)
            step = builder.mul(step, d)
        array = context.make_array(array_type)(context, builder)
        data = builder.inttoptr(addr, array.data.type)
        populate_array(array, data, dims, strides, itemsize, meminfo=None)
        return array._getvalue()

    shape = types.UniTuple(types.int64, ndim)
    return array_type(types.int64, shape, like), codegen


def widen(w):
    """A stored weight as the number it stands for (in kernels): bfloat16 bits (uint16)
    become float32; float and int8 weights are returned as they are (int8 is scaled by
    the caller)."""
    raise NotImplementedError("widen is only for compiled kernels")


@overload(widen)
def _widen_overload(w):
    if isinstance(w, types.Integer) and w.bitwidth == 16 and not w.signed:
        return lambda w: _float32_from_bfloat16_bits(w)
    return lambda w: w


@kernel
def matmul_t(a, wt, scale, out):
    """``out[b, n] = Σ_k a[b, k] wt[k, n]``, times ``scale[n]`` unless ``scale`` is None.

    ``wt`` is a weight matrix stored transposed, (K, N): float, int8 with per-row
    scales (each byte widened to float in registers: a quarter of float32's bytes), or
    bfloat16 bits (uint16, widened by a shift: half of float32's bytes).
    Four rows of ``wt`` per pass over the outputs, shared by every batch row: no
    horizontal sums, each weight read once per call.
    """
    B, K = a.shape
    N = wt.shape[1]
    out[:] = 0
    k = 0
    while k < K:
        if k + 4 <= K:
            w0, w1, w2, w3 = wt[k], wt[k + 1], wt[k + 2], wt[k + 3]
            for b in range(B):
                s0, s1, s2, s3 = a[b, k], a[b, k + 1], a[b, k + 2], a[b, k + 3]
                ob = out[b]
                for n in range(N):
                    ob[n] += (
                        s0 * widen(w0[n])
                        + s1 * widen(w1[n])
                        + s2 * widen(w2[n])
                        + s3 * widen(w3[n])
                    )
            k += 4
        else:
            w0 = wt[k]
            for b in range(B):
                s0 = a[b, k]
                ob = out[b]
                for n in range(N):
                    ob[n] += s0 * widen(w0[n])
            k += 1
    if scale is not None:
        for b in range(B):
            ob = out[b]
            for n in range(N):
                ob[n] *= scale[n]


def product_t(a, wt, scale, out):
    """:func:`matmul_t` (in kernels), or :func:`matmul_nt` on ``wt.T`` where ``wt`` is a
    column-major (Fortran-order) float matrix: the transposed view of a row-major weight
    (a torch parameter's), read as it is rather than copied transposed per call (a 1 MB
    transposed copy costs 20 times a plain one here). Chosen when the kernel is compiled,
    by the array's layout."""
    raise NotImplementedError("product_t is only for compiled kernels")


@overload(product_t)
def _product_t_overload(a, wt, scale, out):
    if isinstance(wt, types.Array) and wt.layout == "F" and scale in (None, types.none):
        return lambda a, wt, scale, out: matmul_nt(a, wt.T, out)
    return lambda a, wt, scale, out: matmul_t(a, wt, scale, out)


@kernel
def matmul_nn_acc(a, w, out):
    """``out[:] += a @ w`` for ``a`` (B, N), ``w`` (N, K), ``out`` (B, K), all C-contiguous.

    Scaled additions of four contiguous rows of ``w`` at a time into ``out[b]``: the
    inner loop vectorises without reassociation and touches ``out`` a quarter as often.
    """
    B, N = a.shape
    for b in range(B):
        ob = out[b]
        K = ob.shape[0]
        n = 0
        while n + 4 <= N:
            s0, s1, s2, s3 = a[b, n], a[b, n + 1], a[b, n + 2], a[b, n + 3]
            w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
            for k in range(K):
                ob[k] += s0 * w0[k] + s1 * w1[k] + s2 * w2[k] + s3 * w3[k]
            n += 4
        while n < N:
            s0, w0 = a[b, n], w[n]
            for k in range(K):
                ob[k] += s0 * w0[k]
            n += 1
