"""Products over packed tiles (``fastrnn.tiles``) against NumPy's."""

import numpy as np
import pytest

from fastrnn.tiles import pack_tiles, tile_width, tiles_product

from .helpers import tolerance


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7, 5), (33, 64), (20, 80), (3, 130), (0, 9), (40, 1)])
@pytest.mark.parametrize("rows", [1, 2, 7])
def test_tiles_product_matches_numpy(shape, rows, dtype, rng):
    K, N = shape
    wt = rng.standard_normal((K, N)).astype(dtype)
    a = rng.standard_normal((rows, K)).astype(dtype)
    W = tile_width(np.dtype(dtype))
    p = np.full((-(-N // W), K, W), np.nan, dtype)
    pack_tiles(np.asfortranarray(wt) if rows == 2 else wt, p)  # any layout packs
    expected = a.astype(np.float64) @ wt.astype(np.float64)
    tol = dict(rtol=0, atol=tolerance(dtype, magnitude=np.sqrt(max(K, 1))))
    for back in (False, True):
        out = np.full((rows, N), 7, dtype)
        tiles_product(a, p, None, out, False, back)
        np.testing.assert_allclose(out, expected, **tol)
        acc = np.tile(np.arange(N, dtype=dtype), (rows, 1))
        tiles_product(a, p, None, acc, True, back)
        np.testing.assert_allclose(acc, expected + np.arange(N), **tol)


def test_partial_tile_leaves_memory_past_the_row_alone(rng):
    # the last tile's masked stores: a row of 70 columns inside a larger buffer
    wt = rng.standard_normal((9, 70)).astype(np.float32)
    W = tile_width(np.dtype(np.float32))
    p = np.empty((-(-70 // W), 9, W), np.float32)
    pack_tiles(wt, p)
    a = rng.standard_normal((1, 9)).astype(np.float32)
    buf = np.full(200, 7, np.float32)
    tiles_product(a, p, None, buf[:70].reshape(1, 70), False, True)
    np.testing.assert_array_equal(buf[70:], 7)
    np.testing.assert_allclose(buf[:70], (a @ wt)[0], rtol=0, atol=tolerance("float32", 3))


@pytest.mark.parametrize("shape", [(20, 70), (64, 128), (3, 5)])
def test_bfloat16_tiles_widen_each_weight_exactly(shape, rng):
    # bfloat16 bits (uint16) in tiles, summed in float32: the product of the widened
    # weights, rounded as float32 sums are
    wt = rng.standard_normal(shape).astype(np.float32)
    bits = (wt.view(np.uint32) >> 16).astype(np.uint16)
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    W = tile_width(np.dtype(np.uint16))
    p = np.full((-(-shape[1] // W), shape[0], W), 0xFFFF, np.uint16)
    pack_tiles(bits, p)
    a = rng.standard_normal((1, shape[0])).astype(np.float32)
    out = np.empty((1, shape[1]), np.float32)
    tiles_product(a, p, None, out, False, False)
    expected = a.astype(np.float64) @ widened.astype(np.float64)
    atol = tolerance("float32", magnitude=np.sqrt(shape[0]))
    np.testing.assert_allclose(out, expected, rtol=0, atol=atol)


def test_int8_tiles_scale_each_column(rng):
    # int8 weights with a factor per column of the product (a quantized row's scale)
    K, N = 33, 70
    q = rng.integers(-127, 128, (K, N)).astype(np.int8)
    scale = rng.uniform(0.001, 0.02, N).astype(np.float32)
    W = tile_width(np.dtype(np.int8))
    p = np.zeros((-(-N // W), K, W), np.int8)
    pack_tiles(q, p)
    a = rng.standard_normal((1, K)).astype(np.float32)
    out = np.full((1, N), np.nan, np.float32)
    tiles_product(a, p, scale, out, False, True)
    expected = (a.astype(np.float64) @ q.astype(np.float64)) * scale
    atol = tolerance("float32", magnitude=np.abs(expected).max() * np.sqrt(K))
    np.testing.assert_allclose(out, expected, rtol=0, atol=atol)


def test_fixed_tiles_pack_weights_that_never_change_once(rng):
    # a quantized model's stored weights: read-only and owning their memory
    from fastrnn.tiles import fixed_tiles

    wt = rng.standard_normal((5, 70)).astype(np.float32)
    assert fixed_tiles(wt) is None  # writeable: may be edited in place, never kept
    assert fixed_tiles(np.ascontiguousarray(wt)[:, :64]) is None  # a view
    wt.flags.writeable = False
    p = fixed_tiles(wt)
    assert p is fixed_tiles(wt) and not p.flags.writeable
    fresh = np.zeros_like(p)
    pack_tiles(wt, fresh)
    np.testing.assert_array_equal(p, fresh)


def test_bfloat16_tiles_are_packed_in_word_pairs():
    # word i of each group of 2L columns (L float32 lanes of a narrow tile's vector):
    # column i in its low half, column L + i in its high
    from fastrnn.tiles import NARROW_VECTOR_BYTES

    L, W = NARROW_VECTOR_BYTES // 4, tile_width(np.dtype(np.uint16))
    bits = np.arange(W, dtype=np.uint16)[None, :]
    p = np.empty((1, 1, W), np.uint16)
    pack_tiles(bits, p)
    words = p[0, 0].view(np.uint32)
    for g in range(W // (2 * L)):
        for i in range(L):
            assert words[L * g + i] == (2 * L * g + i) | ((2 * L * g + L + i) << 16)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M, K, N", [(13, 300, 70), (2, 5, 16), (6, 1, 3), (1, 40, 33)])
def test_panel_gemm_matches_numpy_and_each_row_is_independent_of_the_others(M, K, N, dtype, rng):
    # blocks of 6, 4, 2 and 1 rows; more than GEMM_DEPTH of k; a partial last panel
    # (masked: the columns past N are untouched); accumulating, and either direction
    from fastrnn.tile_gemm import GEMM_DEPTH, panel_width, tiles_gemm

    assert GEMM_DEPTH < 300
    a = rng.standard_normal((M, K)).astype(dtype)
    wt = rng.standard_normal((K, N)).astype(dtype)
    V = panel_width(np.dtype(dtype))
    p = np.full((-(-N // V), K, V), np.nan, dtype)
    pack_tiles(wt, p)
    buf = np.full(M * N + 16, 7, dtype)
    out = buf[: M * N].reshape(M, N)
    tiles_gemm(a, p, out, False, False)
    np.testing.assert_array_equal(buf[M * N :], 7)
    expected = a.astype(np.float64) @ wt.astype(np.float64)
    atol = tolerance(dtype, magnitude=np.sqrt(K))
    np.testing.assert_allclose(out, expected, rtol=0, atol=atol)
    again = np.ones((M, N), dtype)
    tiles_gemm(a, p, again, True, True)
    np.testing.assert_allclose(again, expected + 1, rtol=0, atol=atol)
    for r in range(M):  # a row alone gets the same bits as in the block it was part of
        alone = np.empty((1, N), dtype)
        tiles_gemm(a[r : r + 1].copy(), p, alone, False, r % 2 == 1)
        np.testing.assert_array_equal(alone[0], out[r])


@pytest.mark.parametrize("dtype, W", [("float32", 16), ("float32", 64), ("uint16", 64)])
def test_a_transposed_row_major_matrix_packs_as_its_copy(dtype, W, rng):
    # a torch parameter (N, K) seen as (K, N): packed from its rows (``_pack_columns``)
    w = (rng.standard_normal((70, 9)) * 100).astype(dtype)
    expected = np.full((-(-70 // W), 9, W), 1, dtype)
    pack_tiles(np.ascontiguousarray(w.T), expected)
    p = np.full_like(expected, 2)
    pack_tiles(w.T, p)
    np.testing.assert_array_equal(p, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("part", ["full", "lower", "sum to row", "sum from row"])
@pytest.mark.parametrize("M, K, N", [(13, 300, 70), (300, 20, 32), (5, 3, 16)])
def test_attention_panel_products_compute_the_part_a_causal_mask_leaves(
    M, K, N, part, transposed, dtype, rng
):
    # tile_gemm.product (attention's and the cells' products): packed panels or the
    # matrix read in place (N a whole number of panels), the left operand stored
    # transposed or not; each part against numpy on the lower-triangular operand a
    # causal mask leaves (k <= i or k >= i)
    from fastrnn import tile_gemm
    from fastrnn.tile_gemm import panel_width

    kinds = {"full": tile_gemm.FULL, "lower": tile_gemm.LOWER}
    kinds.update({"sum to row": tile_gemm.SUM_TO_ROW, "sum from row": tile_gemm.SUM_FROM_ROW})
    kind = kinds[part]
    a = rng.standard_normal((M, K)).astype(dtype)
    i, k = np.indices((M, K))
    if part == "sum to row":
        a[k > i] = 0
    elif part == "sum from row":
        a[k < i] = 0
    w = rng.standard_normal((K, N)).astype(dtype)
    V = panel_width(np.dtype(dtype))
    if N % V:
        p = np.full((-(-N // V), K, V), np.nan, dtype)
        pack_tiles(w, p)
    else:
        p = w.reshape(1, K, N)
    out = np.full((M, N), np.nan, dtype)
    left = np.ascontiguousarray(a.T) if transposed else a
    tile_gemm.product(left, p, out, kind, transposed)
    expected = a.astype(np.float64) @ w.astype(np.float64)
    atol = tolerance(dtype, magnitude=np.sqrt(K))
    if part == "lower":  # only the columns j <= i of a row are computed
        keep = np.indices((M, N))[1] <= np.indices((M, N))[0]
        out, expected = out[keep], expected[keep]
    np.testing.assert_allclose(out, expected, rtol=0, atol=atol)


def test_panels_of_the_other_vector_width_match_numpy(tmp_path):
    # the panels are laid out for the CPU's widest vectors (64 bytes with AVX-512, else
    # 32): the width this machine does not pick, run in a fresh process
    import os
    import subprocess
    import sys

    from fastrnn._jit import VECTOR_BYTES

    script = """
import numpy as np
from fastrnn import tile_gemm
from fastrnn.tiles import pack_tiles
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for M, K, N in ((13, 300, 70), (1, 5, 33), (9, 20, 64)):
        a = rng.standard_normal((M, K)).astype(dtype)
        wt = rng.standard_normal((K, N)).astype(dtype)
        W = tile_gemm.panel_width(wt.dtype)
        p = np.empty((-(-N // W), K, W), dtype)
        pack_tiles(wt, p)
        out = np.full((M, N), 2, dtype)
        tile_gemm.tiles_gemm(a, p, out, True, M % 2 == 1)
        rest = np.empty(tile_gemm.padded(M, W) * K + N * M, dtype)
        rows = np.empty((M, N), dtype)
        tile_gemm.rows_times_t(a, np.ascontiguousarray(wt.T), rows, rest, W)
        expected = a.astype(np.float64) @ wt.astype(np.float64)
        tol = 1e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(out, expected + 2, rtol=0, atol=tol * np.sqrt(K))
        np.testing.assert_allclose(rows, expected, rtol=0, atol=tol * np.sqrt(K))
print(tile_gemm.VECTOR_BYTES)
"""
    other = 96 - VECTOR_BYTES
    env = dict(os.environ, FASTRNN_VECTOR_BYTES=str(other), NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(other)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["C", "transposed", "strided"])
@pytest.mark.parametrize("M, K, N", [(70, 300, 45), (8, 50, 1024), (1, 3, 5)])
def test_panel_matmul_matches_numpy(dtype, layout, M, K, N, rng):
    # the models' large products where panels are chosen: a weight gradient's dGᵀ X
    # reads dG in place (transposed), any other left operand is copied
    from fastrnn.tile_gemm import panel_matmul

    a = rng.standard_normal((M, K)).astype(dtype)
    if layout == "transposed":
        a = np.ascontiguousarray(a.T).T
    elif layout == "strided":
        a = np.repeat(a, 2, axis=1)[:, ::2]
    b = rng.standard_normal((K, N)).astype(dtype)
    out = np.full((M, N), np.nan, dtype)
    panel_matmul(a, b, out)
    panel_matmul(a, np.asfortranarray(b), out2 := np.full((M, N), np.nan, dtype))
    expected = a.astype(np.float64) @ b.astype(np.float64)
    atol = tolerance(dtype, magnitude=np.sqrt(K))
    np.testing.assert_allclose(out, expected, rtol=0, atol=atol)
    np.testing.assert_array_equal(out2, out)
