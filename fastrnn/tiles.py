"""Batch-1 matrix-vector products over weights packed in column tiles.

At batch 1 a recurrent step is one vector times a weight matrix, and its cost is reading
the matrix. :func:`matmul_t` reads four rows of the stored transpose at a time and adds
into the output row in memory (two loads and a store per vector of multiply-adds); here
the weights are packed once per call (:func:`pack_tiles`) so that each tile of
:data:`VECTORS` SIMD vectors of output columns is one contiguous stream, ``tile[k, :]``
for every ``k``, and its sums stay in registers for the whole pass (one load per vector
of multiply-adds). The tile loop is written in LLVM IR (:func:`_tile_product`) because
Numba has no vector type and LLVM keeps no array in registers.

Walking the tiles in the opposite order on alternate calls (``back``) makes each pass
start with what the previous one read last, still in L2: a weight matrix a little larger
than L2 (an H=256 LSTM's 1 MB ``W_hh`` against 512 KB here) is then read partly from L2
instead of wholly from L3 on every step.

Measured on this project's AMD EPYC (Zen 3, 512 KB L2) VM, float32, one row, medians of
interleaved runs of 100 products: (256, 1024) 24.7 us with :func:`matmul_t`, 16.7 us
packed in alternating order; (256, 256) 6.2 -> 3.3 us; (64, 256) 1.5 -> 1.0 us.
"""

import threading
import weakref

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import _jit, vector_ir
from ._jit import KERNEL_OPTIONS, kernel
from .linalg import matmul_nn_acc, product_t

#: SIMD vectors of sums a tile keeps in registers (8 of 16 AVX2 registers, or of 32
#: AVX-512 ones: enough independent fused multiply-adds to hide their latency, with room
#: for the operands).
VECTORS = 8


#: Bytes in one SIMD vector of a batch-1 tile: 32 (AVX2's width) on every CPU. On a Zen 5
#: core with AVX-512 the same product in 64-byte vectors (128-column tiles) was slower:
#: (256, 1024) float32 9.5 vs 8.4-8.9 us, (256, 256) 2.4-2.5 vs 1.8-2.1 us (one row,
#: medians of 200 calls alternating direction). The batch products of
#: :mod:`fastrnn.tile_gemm` use the CPU's widest vectors (:data:`fastrnn._jit.VECTOR_BYTES`).
VECTOR_BYTES = 32
#: Bytes in one SIMD vector of a tile of narrow weights (bfloat16 bits, int8): the CPU's
#: widest (:data:`fastrnn._jit.VECTOR_BYTES`). Widening each weight to float32 costs
#: instructions that half-width vectors would double, and such tiles are half or a
#: quarter of float32's bytes: their products are bound by the arithmetic.
NARROW_VECTOR_BYTES = _jit.VECTOR_BYTES


#: Narrow stored weights the tiles widen to float32: bfloat16 bits, int8.
_NARROW = (types.uint16, types.int8)


def tile_width(dtype):
    """Columns per tile for weights of ``dtype`` (a NumPy dtype): 64 float32, bfloat16
    bits (uint16) and int8 (summed in float32), 32 float64."""
    if dtype.kind in "ui":
        return VECTORS * NARROW_VECTOR_BYTES // 4
    return VECTORS * VECTOR_BYTES // dtype.itemsize


@intrinsic
def _tile_product(typingctx, x, r, p, t, out, count, add, scale):
    """``out[r, c0 + j] (+)= (Σ_k x[r, k] p[t, k, j]) · scale[c0 + j]`` for ``j <
    min(W, count)`` (``c0 = t·W``): one row's sums over tile ``t``, kept in
    :data:`VECTORS` SIMD registers while ``k`` runs, then stored, or added to ``out`` with
    ``add``; columns at or past ``count`` are left alone (masked stores: a last, partial
    tile).

    ``x`` (M, K) and ``out`` (M, N) C-contiguous, ``p`` (tiles, K, W) with unit stride
    along its last axis (packed tiles, or a :func:`tile_view`), one float type; or ``p``
    of bfloat16 bits (uint16) or int8 with float32 ``x`` and ``out``, each weight widened
    to float32 in registers (a shift; a conversion). ``scale`` is None (no factor), or
    (N,) float32 factors of the sums' columns (int8 weights' row scales).
    """
    if not (
        all(isinstance(a, types.Array) for a in (x, p, out))
        and x.layout == out.layout == "C"
        and isinstance(x.dtype, types.Float)
        and x.dtype == out.dtype
        and (p.dtype == x.dtype or (p.dtype in _NARROW and x.dtype == types.float32))
        and (x.ndim, p.ndim, out.ndim) == (2, 3, 2)
        and (
            scale in (None, types.none)
            or (isinstance(scale, types.Array) and scale.dtype == x.dtype and scale.ndim == 1)
        )
    ):
        return None
    dtype = x.dtype
    bf16, int8 = p.dtype == types.uint16, p.dtype == types.int8
    scaled = isinstance(scale, types.Array)

    def codegen(context, builder, signature, args):
        xa, pa, oa = (
            context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 2, 4)
        )
        _, r, _, t, _, n_valid, add_flag, scale_arg = args
        nbytes = dtype.bitwidth // 8
        width = NARROW_VECTOR_BYTES if bf16 or int8 else VECTOR_BYTES
        lanes, vec, functions = vector_ir.vector_functions(context, builder, dtype, width)
        ptr_type = vec.as_pointer()
        fma, masked_load, _ = functions
        K = builder.extract_value(xa.shape, 1)
        N = builder.extract_value(oa.shape, 1)
        W = builder.extract_value(pa.shape, 2)
        x_row = builder.gep(xa.data, [builder.mul(r, K)])
        # p by its strides (bytes): packed tiles, or a view of a row-major (K, N) matrix
        # as (N / W, K, W) tiles (see :func:`tile_view`)
        tile_stride = builder.extract_value(pa.strides, 0)
        row_stride = builder.extract_value(pa.strides, 1)
        p_bytes = 2 if bf16 else 1 if int8 else nbytes  # bytes per stored weight
        p_base = builder.gep(
            builder.bitcast(pa.data, ir.IntType(8).as_pointer()), [builder.mul(t, tile_stride)]
        )
        zero = ir.Constant(vec, [0.0] * lanes)

        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", K, vector_ir.const(0)), loop, done)
        builder.position_at_end(loop)
        k = builder.phi(ir.IntType(64))
        k.add_incoming(vector_ir.const(0), entry)
        sums = [builder.phi(vec) for _ in range(VECTORS)]
        for s in sums:
            s.add_incoming(zero, entry)
        p_row = builder.bitcast(builder.gep(p_base, [builder.mul(k, row_stride)]), pa.data.type)
        if bf16:  # pairs of bfloat16 bits (see :func:`pack_tiles`): per 32-bit word, the
            # low half shifted up and the high half masked are two float32 weights
            wide = ir.VectorType(ir.IntType(32), lanes)
            words = [
                builder.load(
                    builder.bitcast(
                        builder.gep(p_row, [vector_ir.const(2 * v * lanes)]), wide.as_pointer()
                    ),
                    align=p_bytes,
                )
                for v in range(VECTORS // 2)
            ]
            sixteen = ir.Constant(wide, [16] * lanes)
            upper = ir.Constant(wide, [0xFFFF0000] * lanes)
            weights = []
            for w in words:
                weights.append(builder.bitcast(builder.shl(w, sixteen), vec))
                weights.append(builder.bitcast(builder.and_(w, upper), vec))
        else:
            stored = ir.VectorType(ir.IntType(8 * p_bytes), lanes) if int8 else vec
            weights = [
                builder.load(
                    builder.bitcast(
                        builder.gep(p_row, [vector_ir.const(v * lanes)]), stored.as_pointer()
                    ),
                    align=p_bytes,
                )
                for v in range(VECTORS)
            ]
        if int8:
            weights = [builder.sitofp(w, vec) for w in weights]
        xs = vector_ir.splat(builder, builder.load(builder.gep(x_row, [k])), lanes)
        updated = [builder.call(fma, [xs, w, s]) for w, s in zip(weights, sums)]
        totals = vector_ir.close_loop(builder, entry, loop, done, k, sums, updated, K)
        c0 = builder.mul(t, W)
        masks = vector_ir.lane_masks(
            builder, n_valid, lanes, VECTORS
        )  # the lanes of ``out``'s columns
        if scaled:  # the columns' factors, loaded like the output's lanes
            align = vector_ir.const(nbytes, 32)
            sa = context.make_array(signature.args[7])(context, builder, scale_arg)
            s_base = builder.gep(sa.data, [c0])
            totals = [
                builder.fmul(
                    total,
                    builder.call(
                        masked_load,
                        [
                            builder.bitcast(
                                builder.gep(s_base, [vector_ir.const(v * lanes)]), ptr_type
                            ),
                            align,
                            mask,
                            zero,
                        ],
                    ),
                )
                for v, (total, mask) in enumerate(zip(totals, masks))
            ]
        o_base = builder.gep(oa.data, [builder.add(builder.mul(r, N), c0)])
        full = builder.icmp_signed(">=", n_valid, vector_ir.const(VECTORS * lanes))
        ptrs = [
            builder.bitcast(builder.gep(o_base, [vector_ir.const(v * lanes)]), ptr_type)
            for v in range(VECTORS)
        ]
        vector_ir.store_sums(builder, functions, ptrs, totals, masks, full, add_flag, nbytes)
        return context.get_dummy_value()

    return types.void(x, types.intp, p, types.intp, out, types.intp, types.boolean, scale), codegen


def tile_view(wt):
    """``wt`` (K, N), C-contiguous, seen as (N / W, K, W) tiles without a copy (rows of
    each tile ``N`` elements apart), or None where that would not pay: ``N`` not a
    multiple of the tile width, or rows a multiple of 2 KB apart (a tile's rows then
    fall in a few cache sets: a (256, 1024) float32 view, 4 KB rows, ran at 1.6x the time
    of packed tiles here, bfloat16 rows of 2 KB made an LSTM step 1.1x slower than
    without tiles; (256, 768) float32, 3 KB rows, 1.07x packed). None on a CPU with
    AVX-512 (:data:`fastrnn._jit.VECTOR_BYTES` 64): on a Zen 5 core views ran slower
    than the rows as stored (:func:`~fastrnn.linalg.matmul_t`): two (256, 768) float32
    products 25.2 vs 18.2 us, (256, 256) 5.8 vs 5.8, (64, 256) 2.0 vs 1.8 (packed tiles
    15.7, 3.9, 1.6: the weights of a float model are never packed for good, as they
    may be edited in place)."""
    K, N = wt.shape
    W = tile_width(wt.dtype)
    if wt.dtype == np.uint16 or _jit.VECTOR_BYTES == 64:  # (bfloat16 tiles are packed in
        return None  # pairs: :func:`pack_tiles`)
    if N % W or (N * wt.itemsize) % 2048 == 0 or not wt.flags.c_contiguous:
        return None
    step = wt.itemsize
    return np.lib.stride_tricks.as_strided(
        wt, (N // W, K, W), (W * step, N * step, step), writeable=False
    )


def pack_tiles(wt, p):
    """``p[t, k, j] = wt[k, t·W + j]`` (zero past the last column): ``wt`` (K, N) in any
    layout into ``p`` (tiles, K, W) C-contiguous, ``W = p.shape[2]``.

    bfloat16 bits (uint16) are stored in pairs instead: in each group of 16 columns,
    32-bit word ``i`` holds column ``i`` in its low half and column ``8 + i`` in its high
    half, so that one load, a shift and a mask give two vectors of float32 weights (the
    plain order needs a widening shuffle and a shift per vector: on AVX2 the bfloat16
    product was then bound by those, at twice float32's time per weight)."""
    if wt.flags.f_contiguous and not wt.flags.c_contiguous:  # a transposed row-major matrix
        _pack_columns(wt.T, p, p.dtype == np.uint16)
    else:
        _pack_tiles(wt, p, p.dtype == np.uint16)


@kernel
def _pack_columns(w, p, paired):
    """:func:`pack_tiles` of ``w.T`` for ``w`` (N, K) C-contiguous (a torch parameter seen
    transposed): each row of ``w`` read once, contiguously, into its tile's column (a
    tile is 16-64 KB, so its scattered writes stay in cache; the row-by-row pack of the
    transposed view read each element from another cache line: 0.5 ms for 1 MB here)."""
    N, K = w.shape
    W = p.shape[2]
    tiles = p.shape[0]
    for t in range(tiles):
        tile = p[t]
        for j in range(W):
            n = t * W + j
            col = _paired_index(j) if paired else j
            if n < N:
                src = w[n]
                for k in range(K):
                    tile[k, col] = src[k]
            else:
                for k in range(K):
                    tile[k, col] = 0


@kernel
def _pack_tiles(wt, p, paired):
    """:func:`pack_tiles`, with the bfloat16 word pairs where ``paired``.

    Row by row of ``wt``, whole tiles as fixed-length copies (a 1 MB pack: 68 us here,
    against 250 us tile by tile with a variable length)."""
    K, N = wt.shape
    W = p.shape[2]
    full = N // W
    rest = N - full * W
    for k in range(K):
        src = wt[k]
        for t in range(full):
            dst = p[t, k]
            part = src[t * W : (t + 1) * W]
            if paired:
                for j in range(W):
                    dst[_paired_index(j)] = part[j]
            else:
                for j in range(W):
                    dst[j] = part[j]
        if rest:
            dst = p[full, k]
            for j in range(W):
                dst[_paired_index(j) if paired else j] = src[full * W + j] if j < rest else 0


@kernel
def _paired_index(j):
    """Where column ``j`` of a tile goes in :func:`pack_tiles`' bfloat16 pairs: in each
    group of two float32 vectors' columns (``2L``, ``L`` lanes), word ``i`` holds column
    ``i`` in its low half and column ``L + i`` in its high half."""
    L = NARROW_VECTOR_BYTES // 4
    c = j % (2 * L)
    return j - c + (2 * c if c < L else 2 * (c - L) + 1)


#: id(weights) -> (a weak reference to them, {key: packed copy}): :func:`kept_pack`'s.
_FIXED = {}
_FIXED_LOCK = threading.Lock()


def kept_pack(owner, key, make):
    """``make()`` (a packed copy of weights of ``owner``, which never change), made once
    per ``key`` and kept, read-only, for as long as ``owner`` lives."""
    with _FIXED_LOCK:
        found = _FIXED.get(id(owner))
        if found is not None and found[0]() is owner and key in found[1]:
            return found[1][key]
        p = make()
        p.flags.writeable = False
        if found is None or found[0]() is not owner:
            # (the callback runs as ``owner`` is freed, before another array takes its id)
            ident = id(owner)
            ref = weakref.ref(owner, lambda _, ident=ident: _FIXED.pop(ident, None))
            found = _FIXED[ident] = (ref, {})
        found[1][key] = p
        return p


def fixed_tiles(wt, W=None):
    """``wt`` (K, N) packed in tiles of ``W`` columns (:func:`pack_tiles`; default
    :func:`tile_width`) once, the packed copy kept for as long as the weights live, for
    weights that never change: a read-only array that owns its memory, or a C- or
    F-contiguous view of one (a quantized model's stored weights, and the float32
    weights they stand for); None for any other array (a float model's weights may be
    edited in place, so its calls pack their own copy)."""
    owner = wt if wt.base is None else wt.base
    if (
        wt.ndim != 2
        or not isinstance(owner, np.ndarray)
        or owner.flags.writeable
        or not owner.flags.owndata
        or not (wt.flags.c_contiguous or wt.flags.f_contiguous)
    ):
        return None
    W = tile_width(wt.dtype) if W is None else W

    def make():
        p = np.empty((-(-wt.shape[1] // W), wt.shape[0], W), wt.dtype)
        pack_tiles(wt, p)
        return p

    return kept_pack(owner, (wt.__array_interface__["data"][0], wt.shape, wt.strides, W), make)


@kernel
def tiles_product(a, p, scale, out, add, back):
    """``out[:] (+)= (a @ wt) * scale`` for ``a`` (M, K) and ``out`` (M, N), ``wt`` (K, N)
    packed in ``p`` by :func:`pack_tiles` (float, bfloat16 bits, or int8 with its (N,)
    ``scale``; None: no factor): per row, a tile's :data:`VECTORS` sums per pass, the
    tiles walked last to first with ``back`` (alternate it between calls over the same
    weights). Made for one row: each further row reads the weights again."""
    N = out.shape[1]
    W = p.shape[2]
    tiles = p.shape[0]
    for r in range(a.shape[0]):
        for i in range(tiles):
            t = tiles - 1 - i if back else i
            _tile_product(a, r, p, t, out, N - t * W, add, scale)


def recurrent_product(a, w, scale, out, s):
    """``out[:] = a @ w`` at step ``s`` of a loop (in kernels), alternating direction with
    ``s`` where ``w`` is packed (3-D): :func:`fastrnn.tile_gemm.tiles_gemm` for more than
    one row over float panels, else :func:`tiles_product`; bfloat16 weights in pair
    panels (uint32, :mod:`fastrnn.pairs`) with ``scale`` the rows' pair scratch (M,
    ceil(K / 2)) uint32; unpacked ``w`` through :func:`~fastrnn.linalg.product_t` as
    stored (with its int8 ``scale``)."""
    raise NotImplementedError("recurrent_product is only for compiled kernels")


def _packed_product(w, add):
    """The product over packed ``w`` (3-D) at a loop step, ``product(a, w, scale, out,
    s)``, as :func:`recurrent_product` (``add`` False) and :func:`backward_product`
    (True, ``scale`` None) choose it."""
    if w.dtype == types.uint32:  # bfloat16 pair panels
        from .pairs import pairs_gemm, round_pairs  # (they build on this module)

        def pairs_step(a, w, scale, out, s):
            round_pairs(a, scale)
            pairs_gemm(scale, w, out, add, s % 2 == 1)

        return pairs_step
    if not isinstance(w.dtype, types.Float):
        return lambda a, w, scale, out, s: tiles_product(a, w, scale, out, add, s % 2 == 1)
    from .tile_gemm import panel_gemm  # (it builds on this module)

    return panel_gemm(w.dtype.bitwidth // 8, add)


@overload(recurrent_product)
def _recurrent_product_overload(a, w, scale, out, s):
    if isinstance(w, types.Array) and w.ndim == 3:
        return _packed_product(w, False)
    return lambda a, w, scale, out, s: product_t(a, w, scale, out)


def backward_product(a, w, out, s):
    """``out[:] += a @ w`` at step ``s`` of a backward loop (in kernels): packed ``w``
    (3-D) as in :func:`recurrent_product`, else :func:`~fastrnn.linalg.matmul_nn_acc`."""
    raise NotImplementedError("backward_product is only for compiled kernels")


@overload(backward_product)
def _backward_product_overload(a, w, out, s):
    if isinstance(w, types.Array) and w.ndim == 3:
        product = njit(_packed_product(w, True), **KERNEL_OPTIONS)
        return lambda a, w, out, s: product(a, w, None, out, s)
    return lambda a, w, out, s: matmul_nn_acc(a, w, out)
