import numpy as np
import pytest

from fastrnn import pairs

from .helpers import tolerance

pytestmark = pytest.mark.skipif(
    not pairs.available(), reason="needs a CPU with AVX512_BF16 (vdpbf16ps)"
)


def _bfloat16(x):
    """float32 -> bfloat16 bits, to nearest, ties to even (the reference rounding)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _widen(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_rows_round_to_nearest_even_in_pairs():
    # halfway cases both ways, odd K (the last pair's high half is 0), signs, zero
    lo = np.float32(1 + 2**-8)  # halfway between two bfloat16: to the even one (1.0)
    hi = np.float32(1 + 3 * 2**-8)  # halfway: to the even one above
    a = np.array([[lo, hi, -lo, 0.0, 3.14159]], np.float32)
    aw = pairs.scratch(1, 5)
    pairs.round_pairs(a, aw)
    bits = [int(b) for b in _bfloat16(a[0])]
    assert _widen(np.array(bits[:2], np.uint16)).tolist() == [1.0, 1 + 2**-6]
    assert aw[0].tolist() == [bits[0] | bits[1] << 16, bits[2] | bits[3] << 16, bits[4]]


@pytest.mark.parametrize("M, K, N", [(13, 37, 70), (8, 256, 64), (1, 1, 1), (21, 300, 33)])
def test_pair_products_match_the_rounded_product(M, K, N, rng):
    # every row block (8, 4, 1), a partial last panel, K past one pass and odd
    a = rng.standard_normal((M, K)).astype(np.float32)
    wt = _bfloat16(rng.standard_normal((K, N)))
    wt.flags.writeable = False
    out = np.full((M, N), np.nan, np.float32)
    pairs.pairs_product(a, wt, out)
    expected = _widen(_bfloat16(a)).astype(np.float64) @ _widen(wt).astype(np.float64)
    atol = tolerance("float32", magnitude=np.sqrt(K))
    np.testing.assert_allclose(out, expected, rtol=0, atol=atol)
    for r in range(M):  # a row alone: the same bits as in its block
        alone = np.empty((1, N), np.float32)
        pairs.pairs_product(a[r : r + 1].copy(), wt, alone)
        np.testing.assert_array_equal(alone[0], out[r])


def test_partial_panels_leave_the_memory_past_a_row_alone(rng):
    wt = _bfloat16(rng.standard_normal((6, 40)))
    wt.flags.writeable = False
    buf = np.full(200, 7, np.float32)
    a = rng.standard_normal((1, 6)).astype(np.float32)
    pairs.pairs_product(a, wt, buf[:40].reshape(1, 40))
    np.testing.assert_array_equal(buf[40:], 7)


def test_fixed_pairs_are_packed_once_and_only_for_weights_that_never_change(rng):
    wt = _bfloat16(rng.standard_normal((5, 70)))
    wt.flags.writeable = False
    p = pairs.fixed_pairs(wt)
    assert p is pairs.fixed_pairs(wt) and not p.flags.writeable
    assert p.shape == (3, 3, pairs.PANEL)
    low, high = p[1, 2, 3] & 0xFFFF, p[1, 2, 3] >> 16
    assert (low, high) == (wt[4, 32 + 3], 0)  # row 4 pairs with a zero row
