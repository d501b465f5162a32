"""Products of a batch (from two rows) over weights packed in column panels.

The per-step product of a batch recurrence, ``h W_hh^T`` for ``B`` rows, reads the same
weights every step. BLAS packs its operand anew on every call; here the weights are
packed once per sequence in panels of :func:`panel_width` columns (the tile layout of
:mod:`fastrnn.tiles` at that width) and each step runs :func:`tiles_gemm` over them, a
register-blocked product (BLIS's shape: blocks of :data:`GEMM_ROWS` rows by two SIMD
vectors of columns, written in LLVM IR like the tiles' one-row product).
"""

import threading

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._jit import VECTOR_BYTES, kernel
from .tiles import (
    _pack_columns,
    _pack_tiles,
    fixed_tiles,
    pack_tiles,
    tiles_product,
)
from .vector_ir import close_loop, const, open_loop, splat, store_rows, vector_functions

#: Rows of ``a`` per block of :func:`tiles_gemm`: 6 rows by 2 vectors with AVX2 (12 of
#: its 16 registers hold sums, as in BLIS's Haswell kernel), 8 with AVX-512 (16 of 32; on
#: a Zen 5 core, float32, one core: 247/244/242/238 GFLOP/s for 64/32/16/8 rows of
#: (., 256) x (256, 1024), against 247/232/234/202 with 6 rows), and the reach in ``k`` of a pass (a
#: panel's 256 rows of two vectors, 16 KB with AVX2 or 32 KB with AVX-512, stay in L1
#: while every block reads them). Vectors are :data:`fastrnn._jit.VECTOR_BYTES` wide.
GEMM_ROWS = 8 if VECTOR_BYTES == 64 else 6
GEMM_DEPTH = 256


@intrinsic
def _block_product(typingctx, a, r0, rows, p, t, c, k0, k1, out, add):
    """``out[r0 + i, t·W + c + j] (+)= Σ_{k0 <= k < k1} a[r0 + i, k] p[t, k, c + j]`` for
    ``i < rows`` (a literal) and two SIMD vectors of columns ``j`` (masked past ``out``'s
    last column): the block's sums stay in registers while ``k`` runs. ``a`` (M, K) and
    ``out`` (M, N) C-contiguous floats, ``p`` (tiles, K, W) float tiles of the same type
    (:func:`pack_tiles`, unit stride along the last axis)."""
    return _block_typing(a, rows, p, out, False)


@intrinsic
def _block_product_t(typingctx, a, r0, rows, p, t, c, k0, k1, out, add):
    """:func:`_block_product` of ``a.T``: ``a`` (K, M) C-contiguous holds the left
    operand transposed (a block's ``rows`` values at each ``k`` are then adjacent), as
    attention's backward needs for ``Pᵀ dO`` and ``dSᵀ Q``."""
    return _block_typing(a, rows, p, out, True)


def _block_typing(a, rows, p, out, transposed):
    """The signature and code generator of :func:`_block_product` (``a`` transposed
    with ``transposed``), or None for arguments it does not take."""
    if not (
        isinstance(rows, types.IntegerLiteral)
        and all(isinstance(v, types.Array) for v in (a, p, out))
        and a.layout == out.layout == "C"
        and isinstance(a.dtype, types.Float)
        and a.dtype == p.dtype == out.dtype
        and (a.ndim, p.ndim, out.ndim) == (2, 3, 2)
    ):
        return None
    R, dtype = rows.literal_value, a.dtype

    def codegen(context, builder, signature, args):
        aa, pa, oa = (
            context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 3, 8)
        )
        _, r0, _, _, t, c, k0, k1, _, add_flag = args
        nbytes = dtype.bitwidth // 8
        lanes, vec, functions = vector_functions(context, builder, dtype, VECTOR_BYTES)
        ptr_type = vec.as_pointer()
        fma = functions[0]
        K = builder.extract_value(aa.shape, 1)
        N = builder.extract_value(oa.shape, 1)
        W = builder.extract_value(pa.shape, 2)
        if transposed:  # a[r0 + i, k] is at (r0 + i) + k * K
            a_rows = [builder.gep(aa.data, [builder.add(r0, const(i))]) for i in range(R)]
        else:
            a_rows = [
                builder.gep(aa.data, [builder.mul(builder.add(r0, const(i)), K)]) for i in range(R)
            ]
        row_stride = builder.extract_value(pa.strides, 1)
        base = builder.gep(
            builder.bitcast(pa.data, ir.IntType(8).as_pointer()),
            [builder.mul(t, builder.extract_value(pa.strides, 0))],
        )
        base = builder.gep(builder.bitcast(base, pa.data.type), [c])
        entry, loop, done, k, sums = open_loop(builder, k0, k1, vec, 2 * R, "block")
        p_row = builder.bitcast(
            builder.gep(
                builder.bitcast(base, ir.IntType(8).as_pointer()), [builder.mul(k, row_stride)]
            ),
            pa.data.type,
        )
        weights = [
            builder.load(
                builder.bitcast(builder.gep(p_row, [const(v * lanes)]), ptr_type), align=nbytes
            )
            for v in range(2)
        ]
        a_k = builder.mul(k, K) if transposed else k
        updated = []
        for i in range(R):
            x = splat(builder, builder.load(builder.gep(a_rows[i], [a_k])), lanes)
            updated += [builder.call(fma, [x, w, sums[2 * i + v]]) for v, w in enumerate(weights)]
        totals = close_loop(builder, entry, loop, done, k, sums, updated, k1)
        c0 = builder.add(builder.mul(t, W), c)
        rows = [totals[2 * i : 2 * i + 2] for i in range(R)]
        store_rows(builder, functions, oa.data, r0, N, c0, rows, add_flag, nbytes)
        return context.get_dummy_value()

    sig = types.void(
        a, types.intp, rows, p, types.intp, types.intp, types.intp, types.intp, out, types.boolean
    )
    return sig, codegen


def panel_width(dtype):
    """Columns per panel of :func:`tiles_gemm` for weights of ``dtype`` (a NumPy float
    dtype): two SIMD vectors, 16 float32 or 8 float64 (64 bytes, one cache line)."""
    return 2 * VECTOR_BYTES // dtype.itemsize


@kernel
def tiles_gemm(a, p, out, add, back):
    """``out[:] (+)= a @ wt`` for ``a`` (M, K), ``out`` (M, N) C-contiguous floats and
    ``wt`` (K, N) packed in panels ``p`` (:func:`fastrnn.tiles.pack_tiles` with
    :func:`panel_width` columns per tile): the products of a batch (from two rows) over
    weights packed once per sequence; panels walked last to first with ``back``
    (alternate it between steps: each step starts with what the last one read last).

    A panel's :data:`GEMM_DEPTH` rows (16 KB, contiguous) stay in L1 while blocks of
    :data:`GEMM_ROWS` rows of ``a`` pass over them (:func:`_block_product`). Against
    NumPy's OpenBLAS here (one core, float32, interleaved medians, the weights packed
    beforehand): (64, 256) x (256, 1024) 87 vs 70 GFLOP/s, (32, ...) 83 vs 63, (16, ...)
    83 vs 48, (8, ...) 63 vs 30; OpenBLAS packs its operand anew on every call. Panels
    wider than :func:`panel_width` are read in sub-panels of that width (a 64-column
    tile's rows are 256 bytes apart and fall in a quarter of L1's sets: 25% slower)."""
    M, K = a.shape
    N = out.shape[1]
    W = p.shape[2]
    V = 2 * VECTOR_BYTES // a.itemsize  # columns of a sub-panel
    panels = p.shape[0]
    for k0 in range(0, K, GEMM_DEPTH):
        k1 = min(K, k0 + GEMM_DEPTH)
        accumulate = add or k0 > 0
        for n in range(panels):
            t = panels - 1 - n if back else n
            for c in range(0, W, V):
                if t * W + c >= N:
                    break
                i = 0
                while i + GEMM_ROWS <= M:
                    _block_product(a, i, GEMM_ROWS, p, t, c, k0, k1, out, accumulate)
                    i += GEMM_ROWS
                while M - i >= 4:
                    _block_product(a, i, 4, p, t, c, k0, k1, out, accumulate)
                    i += 4
                if M - i >= 2:
                    _block_product(a, i, 2, p, t, c, k0, k1, out, accumulate)
                    i += 2
                if M - i >= 1:
                    _block_product(a, i, 1, p, t, c, k0, k1, out, accumulate)


def panel_gemm(itemsize, add):
    """A loop step's product over packed float weights of ``itemsize`` bytes,
    ``product(a, w, scale, out, s)`` (``scale`` None): :func:`tiles_gemm` over panels,
    :func:`~fastrnn.tiles.tiles_product` over a batch-1 tile's columns, alternating
    direction with ``s``; ``add`` accumulates into ``out``."""
    V = 2 * VECTOR_BYTES // itemsize

    def product(a, w, scale, out, s):
        if w.shape[2] == V:
            tiles_gemm(a, w, out, add, s % 2 == 1)
        else:
            tiles_product(a, w, scale, out, add, s % 2 == 1)

    return product


#: Kinds of product by the part of ``out`` (rows ``i``, columns ``j``) and of the sum
#: (``k``) a causal mask leaves: every part; ``j <= i`` (scores, ``dO Vᵀ``); ``k <= i``
#: (``P V``, ``dS K``); ``k >= i`` (``Pᵀ dO``, ``dSᵀ Q``).
FULL, LOWER, SUM_TO_ROW, SUM_FROM_ROW = 0, 1, 2, 3


@kernel
def padded(n, W):
    """``n`` rounded up to a whole number of ``W``."""
    return -(-n // W) * W


@kernel
def _block(a, i, R, p, t, c, k0, k1, out, add, transposed):
    """One :func:`~fastrnn.tile_gemm._block_product` of ``R`` (4, 2 or 1) rows."""
    if transposed:
        if R == 4:
            _block_product_t(a, i, 4, p, t, c, k0, k1, out, add)
        elif R == 2:
            _block_product_t(a, i, 2, p, t, c, k0, k1, out, add)
        else:
            _block_product_t(a, i, 1, p, t, c, k0, k1, out, add)
    elif R == 4:
        _block_product(a, i, 4, p, t, c, k0, k1, out, add)
    elif R == 2:
        _block_product(a, i, 2, p, t, c, k0, k1, out, add)
    else:
        _block_product(a, i, 1, p, t, c, k0, k1, out, add)


@kernel
def product(a, p, out, part, transposed):
    """``out = a @ w`` (``a.T @ w`` with ``transposed``) for ``w`` (K, N) in panels ``p``
    (tiles, K, Wp): packed (``Wp`` the panel width) or ``w`` itself seen as one tile
    (``Wp = N``, a multiple of the panel width), computing only the ``part`` a causal
    mask leaves (:data:`FULL` ...). Entries of ``out`` outside it are zero, or left as
    they were for :data:`LOWER`."""
    M, N = out.shape
    K, Wp = p.shape[1], p.shape[2]
    V = 2 * VECTOR_BYTES // out.itemsize
    if part == SUM_FROM_ROW and M > K:
        out[K:] = 0  # rows whose sums are empty
    for k0 in range(0, K, GEMM_DEPTH):
        k1 = min(K, k0 + GEMM_DEPTH)
        for t in range(p.shape[0]):
            for c in range(0, Wp, V):
                if t * Wp + c >= N:
                    break
                i = t * Wp + c if part == LOWER else 0
                while i < M:
                    R = GEMM_ROWS if M - i >= GEMM_ROWS else (4 if M - i >= 4 else M - i)
                    R = 2 if R == 3 else R
                    lo, hi, first = k0, k1, 0
                    if part == SUM_TO_ROW:
                        hi = min(hi, i + R)
                    elif part == SUM_FROM_ROW:
                        lo, first = max(lo, i), i
                    if lo >= hi:
                        pass
                    elif R < GEMM_ROWS:
                        _block(a, i, R, p, t, c, lo, hi, out, lo > first, transposed)
                    elif transposed:  # (full blocks called here, not through _block:
                        _block_product_t(a, i, GEMM_ROWS, p, t, c, lo, hi, out, lo > first)
                    else:  # 12-15% faster at L = 16 and 64)
                        _block_product(a, i, GEMM_ROWS, p, t, c, lo, hi, out, lo > first)
                    i += R


@kernel
def times(a, w, out, part, transposed, rest, W):
    """:func:`product` of ``w`` (K, N) C-contiguous: read in place as one tile where
    ``N`` is a whole number of panels of width ``W``, else packed into ``rest``."""
    K, N = w.shape
    if N % W == 0:
        product(a, w.reshape((1, K, N)), out, part, transposed)
    else:
        times_packed(a, w, out, part, transposed, rest, W)


@kernel
def times_packed(a, w, out, part, transposed, rest, W):
    """:func:`product` of ``w`` (K, N) C-contiguous packed into ``rest`` (``padded(N,
    W)·K`` elements) in panels of width ``W``: :func:`times` where ``w`` cannot be read
    in place, or where its rows, 1 KB or more apart, would fall in a few of L1's sets."""
    K, N = w.shape
    p = rest[: padded(N, W) * K].reshape((padded(N, W) // W, K, W))
    _pack_tiles(w, p, False)
    product(a, p, out, part, transposed)


@kernel
def times_t(a, w, out, part, rest, W):
    """:func:`product` of ``wᵀ`` for ``w`` (N, K) C-contiguous (keys or values against
    the queries' rows): packed into ``rest`` from ``w``'s rows."""
    N, K = w.shape
    p = rest[: padded(N, W) * K].reshape((padded(N, W) // W, K, W))
    _pack_columns(w, p, False)
    product(a, p, out, part, False)


@kernel
def rows_times_t(x, w, out, rest, W):
    """``out = x @ wᵀ`` for ``x`` (B, K) and ``w`` (N, K) C-contiguous (a torch
    ``Linear``'s weight layout): computed as ``(w @ xᵀ)ᵀ`` on panels of ``xᵀ`` of ``W``
    columns packed into ``rest`` from ``x``'s rows, the weights read in place row by row
    (nothing of theirs is packed per call), the result written transposed into ``out``.
    ``rest`` holds ``padded(B, W)·K + N·B`` elements."""
    B, K = x.shape
    N = w.shape[0]
    P = padded(B, W) * K
    out_t = rest[P : P + N * B].reshape((N, B))
    times_t(w, x, out_t, FULL, rest[:P], W)
    for n in range(B):
        row = out[n]
        for j in range(N):
            row[j] = out_t[j, n]


_SCRATCH = threading.local()  # each thread's buffer for :func:`panel_matmul`'s panels


def panel_matmul(a, b, out):
    """``out[:] = a @ b`` for float ``a`` (M, K), ``b`` (K, N) of one dtype and ``out``
    (M, N) C-contiguous: ``b`` packed in panels (in this thread's buffer, reused: fresh
    memory costs a page fault per 4 KB; once for good where ``b`` never changes, see
    :func:`~fastrnn.tiles.fixed_tiles`) and :func:`product` over them; ``a`` read in
    place where it or its transpose is C-contiguous (a weight gradient's ``dGᵀ X``).

    Against the other products a Zen 5 core (AVX-512) has, one thread, float32, medians
    (ms): ``dGᵀ X`` for dG (1600, 1024), X (1600, 256): NumPy's OpenBLAS (AVX2 kernels
    there) 6.9, torch's oneDNN 4.8 (with the copy of ``dGᵀ`` it needs), this 4.1;
    ``dG W`` for W (1024, 256): 6.7, 3.7, 3.4; (50, 1024) rows: 0.22, 0.18, 0.13."""
    K, N = b.shape
    W = panel_width(b.dtype)
    p = fixed_tiles(b, W)  # (weights that never change: packed once)
    if p is None:
        size = padded(N, W) * K
        buf = getattr(_SCRATCH, "buf", None)
        if buf is None or buf.dtype != b.dtype or buf.size < size:
            buf = _SCRATCH.buf = np.empty(size, b.dtype)
        p = buf[:size].reshape((padded(N, W) // W, K, W))
        pack_tiles(b, p)
    if a.flags.c_contiguous:
        product(a, p, out, FULL, False)
    elif a.T.flags.c_contiguous:
        product(a.T, p, out, FULL, True)
    else:
        product(np.ascontiguousarray(a), p, out, FULL, False)
