"""LLVM IR pieces of the register-blocked products (``fastrnn.tiles``,
``fastrnn.tile_gemm``, ``fastrnn.pairs``): constants and splats, a vector type's fused
multiply-add and masked loads and stores, a loop over ``k`` carrying vectors of sums,
and the stores of finished sums (masked past a row's last column).

Numba has no vector type and LLVM keeps no array in registers, so the products that
hold their sums in registers are written as ``numba.extending.intrinsic`` code
generators with these.
"""

from llvmlite import ir
from numba.core import cgutils


def const(value, bits=64):
    return ir.Constant(ir.IntType(bits), value)


def splat(builder, value, lanes):
    """A vector with ``value`` in each of its ``lanes``."""
    vec = ir.VectorType(value.type, lanes)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, const(0, 32))
    return builder.shuffle_vector(
        one, one, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    )


def vector_functions(context, builder, dtype, vector_bytes):
    """``(lanes, vec, functions)`` for sums of ``dtype`` (a Numba float type) in SIMD
    vectors of ``vector_bytes``: lanes per vector, the LLVM vector type, and LLVM's fused
    multiply-add, masked load and masked store of such vectors."""
    lanes = vector_bytes // (dtype.bitwidth // 8)
    vec = ir.VectorType(context.get_data_type(dtype), lanes)
    name = f"v{lanes}f{dtype.bitwidth}"
    mask_type = ir.VectorType(ir.IntType(1), lanes)
    i32, ptr_type = ir.IntType(32), vec.as_pointer()
    functions = tuple(
        cgutils.get_or_insert_function(builder.module, ir.FunctionType(*sig), llvm_name)
        for llvm_name, sig in (
            (f"llvm.fma.{name}", (vec, [vec, vec, vec])),
            (f"llvm.masked.load.{name}.p0{name}", (vec, [ptr_type, i32, mask_type, vec])),
            (
                f"llvm.masked.store.{name}.p0{name}",
                (ir.VoidType(), [vec, ptr_type, i32, mask_type]),
            ),
        )
    )
    return lanes, vec, functions


def open_loop(builder, k0, k1, vec, count, name):
    """Open a loop over ``k`` from ``k0`` while ``k < k1`` (not entered where ``k0 >=
    k1``) carrying ``count`` sums of type ``vec`` from zero: ``(entry, loop, done, k,
    sums)``, for :func:`close_loop`."""
    entry = builder.block
    loop = builder.append_basic_block(f"{name}.loop")
    done = builder.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed("<", k0, k1), loop, done)
    builder.position_at_end(loop)
    k = builder.phi(ir.IntType(64))
    k.add_incoming(k0, entry)
    sums = [builder.phi(vec) for _ in range(count)]
    for s in sums:
        s.add_incoming(ir.Constant(vec, [0.0] * vec.count), entry)
    return entry, loop, done, k, sums


def store_rows(builder, functions, out, r0, N, c0, pairs, add_flag, nbytes):
    """Store (or add) ``pairs[i]``, two vectors of sums, at row ``r0 + i`` of ``out`` (a
    pointer to (·, N) C-contiguous elements) from column ``c0``, the lanes past column
    ``N`` left alone."""
    lanes = pairs[0][0].type.count
    ptr_type = pairs[0][0].type.as_pointer()
    n_valid = builder.sub(N, c0)
    masks = lane_masks(builder, n_valid, lanes, 2)
    full = builder.icmp_signed(">=", n_valid, const(2 * lanes))
    for i, totals in enumerate(pairs):
        row = builder.gep(out, [builder.add(builder.mul(builder.add(r0, const(i)), N), c0)])
        ptrs = [builder.bitcast(builder.gep(row, [const(v * lanes)]), ptr_type) for v in range(2)]
        store_sums(builder, functions, ptrs, totals, masks, full, add_flag, nbytes)


def close_loop(builder, entry, loop, done, k, sums, updated, k_end):
    """Close a loop over ``k`` whose ``sums`` (phis) become ``updated`` each pass, and
    continue after it: returns the sums as they leave the loop (zero where it never ran,
    ``k`` starting at or past ``k_end``)."""
    k_next = builder.add(k, const(1))
    last = builder.block
    k.add_incoming(k_next, last)
    for s, u in zip(sums, updated):
        s.add_incoming(u, last)
    builder.cbranch(builder.icmp_signed("<", k_next, k_end), loop, done)
    builder.position_at_end(done)
    totals = []
    for u in updated:
        total = builder.phi(u.type)
        total.add_incoming(ir.Constant(u.type, [0.0] * u.type.count), entry)
        total.add_incoming(u, last)
        totals.append(total)
    return totals


def lane_masks(builder, n_valid, lanes, vectors):
    """Per vector of ``lanes``, which of its lanes are among the first ``n_valid``."""
    lane_ids = ir.Constant(ir.VectorType(ir.IntType(64), lanes), list(range(lanes)))
    limit = splat(builder, n_valid, lanes)
    return [
        builder.icmp_signed(
            "<", builder.add(lane_ids, splat(builder, const(v * lanes), lanes)), limit
        )
        for v in range(vectors)
    ]


def store_sums(builder, functions, ptrs, totals, masks, full, add_flag, nbytes):
    """Store (or, with ``add_flag``, add) each of ``totals`` at its pointer: a plain vector
    store where ``full``, else only the lanes of its mask (a partial last tile)."""
    _, masked_load, masked_store = functions
    align = const(nbytes, 32)
    for ptr, total, mask in zip(ptrs, totals, masks):
        zero = ir.Constant(total.type, [0.0] * total.type.count)
        with builder.if_else(full) as (whole, part):
            with whole:
                old = builder.load(ptr, align=nbytes)
                value = builder.select(add_flag, builder.fadd(total, old), total)
                builder.store(value, ptr, align=nbytes)
            with part:
                old = builder.call(masked_load, [ptr, align, mask, zero])
                value = builder.select(add_flag, builder.fadd(total, old), total)
                builder.call(masked_store, [value, ptr, align, mask])
