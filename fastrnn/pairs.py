"""Products of bfloat16 weights with bfloat16-rounded rows, on AVX512_BF16.

A quantized ``bfloat16`` model stores its weights in half of float32's bytes. At batch 1
a step is bound by reading them, and the tiles of :mod:`fastrnn.tiles` widen each one to
float32 in registers. A product of many rows (a batch's recurrent step, a sequence's
input projection) is bound by its multiply-adds instead: there CPUs with AVX512_BF16
(Intel from Cooper Lake, AMD from Zen 4) have ``vdpbf16ps``, which takes two vectors of
32 bfloat16 values and adds 16 dot products of adjacent pairs to 16 float32 sums: twice
the multiply-adds of a float32 fused multiply-add per instruction.

The weights ``wt`` (K, N) are packed once (they never change) in panels of
:data:`PANEL` columns (:func:`pack_pairs`): for each pair of rows ``k = 2q, 2q + 1`` a
panel row holds, column by column, the two weights as one 32-bit word (low half row
``2q``). The rows of the other operand are rounded to bfloat16 (to nearest, ties to
even) and paired the same way (:func:`round_pairs`). The sums stay float32; the rounding
of the rows (a relative 2^-9 at most) is what this product adds to the weights' own.
"""

import functools
import os
import threading

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _jit, threads
from ._jit import kernel
from .tiles import kept_pack
from .vector_ir import close_loop, const, open_loop, splat, store_rows, vector_functions

#: Output columns per panel: two vectors of 16 float32 sums.
PANEL = 32
#: Rows of ``a`` per block (16 of the 32 vector registers hold sums), and pairs of ``k``
#: per pass over a panel (its 128 rows of 128 bytes, 16 KB, stay in L1).
PAIR_ROWS = 8
PAIR_DEPTH = 128


@functools.lru_cache(maxsize=1)
def available():
    """Whether this CPU has ``vdpbf16ps`` (AVX512_BF16) and fastrnn compiles for AVX-512
    (:data:`fastrnn._jit.VECTOR_BYTES`); ``FASTRNN_BF16_PAIRS=0`` turns the pair products
    off (the bfloat16 models then widen their weights to float32, as on other CPUs)."""
    if os.environ.get("FASTRNN_BF16_PAIRS", "") == "0" or _jit.VECTOR_BYTES != 64:
        return False
    try:
        from llvmlite import binding

        return bool(binding.get_host_cpu_features().get("avx512bf16", False))
    except Exception:  # a host whose features LLVM cannot read
        return False


@intrinsic
def _pair_block(typingctx, aw, r0, rows, p, t, panels, q0, q1, out, add):
    """``out[r0 + i, (t + u)·PANEL + j] (+)= Σ_{q0 <= q < q1} a[r0 + i, 2q:2q+2] ·
    wt[2q:2q+2, (t + u)·PANEL + j]`` for ``i < rows`` and ``u < panels`` (literals) and
    each panel's columns (masked past ``out``'s last): ``aw`` (M, Q) uint32 rows in
    bfloat16 pairs (:func:`round_pairs`), ``p`` (panels, Q, PANEL) uint32 weight pairs
    (:func:`pack_pairs`), ``out`` (M, N) float32, all C-contiguous. A column's sum runs
    over ``q`` in order whatever the block's shape: a row gets the same bits alone as in
    a block. Fewer rows take more panels, so that eight sums or more are in flight (a
    ``vdpbf16ps`` waits for the last one on its sum)."""
    if not (
        isinstance(rows, types.IntegerLiteral)
        and isinstance(panels, types.IntegerLiteral)
        and all(isinstance(v, types.Array) and v.layout == "C" for v in (aw, p, out))
        and aw.dtype == p.dtype == types.uint32
        and out.dtype == types.float32
        and (aw.ndim, p.ndim, out.ndim) == (2, 3, 2)
    ):
        return None
    R, U = rows.literal_value, panels.literal_value

    def codegen(context, builder, signature, args):
        aa, pa, oa = (
            context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 3, 8)
        )
        _, r0, _, _, t, _, q0, q1, _, add_flag = args
        lanes, vec, functions = vector_functions(context, builder, types.float32, 64)
        words = ir.VectorType(ir.IntType(32), lanes)
        dot = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vec, [vec, words, words]),
            "llvm.x86.avx512bf16.dpbf16ps.512",  # (the <16 x i32> form LLVM upgrades)
        )
        Q = builder.extract_value(aa.shape, 1)
        N = builder.extract_value(oa.shape, 1)
        a_rows = [
            builder.gep(aa.data, [builder.mul(builder.add(r0, const(i)), Q)]) for i in range(R)
        ]
        panel_words = builder.mul(Q, const(PANEL))
        bases = [builder.gep(pa.data, [builder.mul(builder.add(t, const(u)), panel_words)])
                 for u in range(U)]  # fmt: skip
        # sums [row][panel][vector]
        entry, loop, done, q, sums = open_loop(builder, q0, q1, vec, 2 * R * U, "pairs")
        weights = []
        for base in bases:
            row = builder.gep(base, [builder.mul(q, const(PANEL))])
            weights += [
                builder.load(
                    builder.bitcast(builder.gep(row, [const(v * lanes)]), words.as_pointer()),
                    align=4,
                )
                for v in range(2)
            ]
        updated = []
        for i in range(R):
            x = splat(builder, builder.load(builder.gep(a_rows[i], [q])), lanes)
            updated += [
                builder.call(dot, [sums[2 * U * i + v], x, w]) for v, w in enumerate(weights)
            ]
        totals = close_loop(builder, entry, loop, done, q, sums, updated, q1)
        for u in range(U):
            c0 = builder.mul(builder.add(t, const(u)), const(PANEL))
            rows = [totals[2 * U * i + 2 * u : 2 * U * i + 2 * u + 2] for i in range(R)]
            store_rows(builder, functions, oa.data, r0, N, c0, rows, add_flag, 4)
        return context.get_dummy_value()

    sig = types.void(
        aw, types.intp, rows, p, types.intp, panels, types.intp, types.intp, out, types.boolean
    )
    return sig, codegen


@kernel
def pairs_gemm(aw, p, out, add, back):
    """``out[:] (+)= a @ wt`` for ``a``'s rows in bfloat16 pairs ``aw`` (M, Q) and ``wt``
    packed in pair panels ``p`` (:func:`pack_pairs`), ``out`` (M, N) float32: blocks of
    :data:`PAIR_ROWS` rows by one panel, the rows left over in blocks of 4 rows by 2
    panels and of 1 row by 4 panels; the panels walked last to first with ``back``
    (alternate it between a loop's steps, as the tiles do: each step starts with what
    the last one read last, still in L2)."""
    M, Q = aw.shape
    P = p.shape[0]
    full = M - M % PAIR_ROWS
    for q0 in range(0, Q, PAIR_DEPTH):
        q1 = min(Q, q0 + PAIR_DEPTH)
        acc = add or q0 > 0
        for n in range(P):
            t = P - 1 - n if back else n
            for i in range(0, full, PAIR_ROWS):
                _pair_block(aw, i, PAIR_ROWS, p, t, 1, q0, q1, out, acc)
        i = full
        while i + 4 <= M:
            for n in range(0, P - P % 2, 2):
                t = P - P % 2 - 2 - n if back else n
                _pair_block(aw, i, 4, p, t, 2, q0, q1, out, acc)
            if P % 2:
                _pair_block(aw, i, 4, p, P - 1, 1, q0, q1, out, acc)
            i += 4
        while i < M:
            for n in range(0, P - P % 4, 4):
                t = P - P % 4 - 4 - n if back else n
                _pair_block(aw, i, 1, p, t, 4, q0, q1, out, acc)
            for t in range(P - P % 4, P):
                _pair_block(aw, i, 1, p, t, 1, q0, q1, out, acc)
            i += 1


@kernel
def round_pairs(a, aw):
    """``a`` (M, K) float32 rounded to bfloat16 (to nearest, ties to even) in pairs:
    ``aw[m, q]`` (M, ceil(K / 2)) uint32 holds ``a[m, 2q]`` in its low half and ``a[m, 2q +
    1]`` (0 past ``K``) in its high half."""
    M, K = a.shape
    bits = a.view(np.uint32)
    for m in range(M):
        src = bits[m]
        dst = aw[m]
        for q in range(K // 2):
            lo = src[2 * q]
            hi = src[2 * q + 1]
            lo = (lo + 0x7FFF + ((lo >> 16) & 1)) >> 16
            hi = (hi + 0x7FFF + ((hi >> 16) & 1)) & 0xFFFF0000
            dst[q] = np.uint32(lo | hi)
        if K % 2:
            lo = src[K - 1]
            dst[K // 2] = np.uint32((lo + 0x7FFF + ((lo >> 16) & 1)) >> 16)


@kernel
def pack_pairs(wt, p):
    """``wt`` (K, N) bfloat16 bits (uint16), C-contiguous, into pair panels ``p``
    (ceil(N / PANEL), ceil(K / 2), PANEL) uint32: ``p[t, q, j]`` holds ``wt[2q, t·PANEL +
    j]`` in its low half and ``wt[2q + 1, ...]`` in its high half (0 past either edge)."""
    K, N = wt.shape
    for t in range(p.shape[0]):
        for q in range(p.shape[1]):
            dst = p[t, q]
            for j in range(PANEL):
                n = t * PANEL + j
                lo = np.uint32(wt[2 * q, n]) if n < N else np.uint32(0)
                hi = np.uint32(0)
                if n < N and 2 * q + 1 < K:
                    hi = np.uint32(wt[2 * q + 1, n])
                dst[j] = lo | (hi << np.uint32(16))


def panel_shape(K, N):
    """The shape of ``wt`` (K, N) in pair panels (:func:`pack_pairs`)."""
    return (-(-N // PANEL), -(-K // 2), PANEL)


def fixed_pairs(wt):
    """``wt`` (K, N) bfloat16 bits, read-only, C-contiguous and owning its memory (a
    quantized model's stored weights, which never change), in pair panels, packed once
    and kept while ``wt`` lives (:func:`fastrnn.tiles.kept_pack`)."""

    def make():
        p = np.empty(panel_shape(*wt.shape), np.uint32)
        pack_pairs(wt, p)
        return p

    return kept_pack(wt, "pairs", make)


def scratch(M, K):
    """The pair scratch of ``M`` rows of ``K`` values (:func:`round_pairs`' ``aw``)."""
    return np.empty((M, -(-K // 2)), np.uint32)


_ROWS = threading.local()  # each thread's pair scratch for :func:`rows_product`


def rows_product(a, p, out):
    """``out[:] = a @ wt`` on this thread for ``a`` (M, K) float32 C-contiguous, rounded
    to bfloat16 in pairs in this thread's buffer (reused from call to call: a
    projection's rows are megabytes, and fresh memory costs a page fault per 4 KB), and
    ``wt`` in pair panels ``p``."""
    M, K = a.shape
    size = M * -(-K // 2)
    buf = getattr(_ROWS, "buf", None)
    if buf is None or buf.size < size:
        buf = _ROWS.buf = np.empty(size, np.uint32)
    aw = buf[:size].reshape((M, -(-K // 2)))
    round_pairs(a, aw)
    pairs_gemm(aw, p, out, False, False)
    return out


def pairs_product(a, wt, out):
    """``out[:] = a @ wt`` for ``a`` (M, K) float32 C-contiguous (rounded to bfloat16 in
    pairs here), ``wt`` (K, N) stored bfloat16 bits (:func:`fixed_pairs`), ``out`` (M, N)
    float32 C-contiguous; the rows split between fastrnn's threads."""
    p = fixed_pairs(wt)
    M = a.shape[0]
    pieces = threads.split(M, 64)

    def piece(r0, r1):
        rows_product(a[r0:r1], p, out[r0:r1])

    if len(pieces) == 1:
        piece(0, M)
    else:
        threads.run(piece, pieces)
    return out
