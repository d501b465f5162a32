"""Cell parity with torch.nn.*Cell."""

import numpy as np
import pytest
import torch

from .helpers import CELLS, assert_close, make_pair


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("batch", [None, 1, 4])
def test_cell_matches_torch(kind, bias, dtype, batch, rng):
    cell, tcell = make_pair(kind, 5, 7, dtype, table=CELLS, bias=bias)
    lead = () if batch is None else (batch,)
    x = rng.standard_normal(lead + (5,)).astype(dtype)
    h = rng.standard_normal(lead + (7,)).astype(dtype)
    with torch.no_grad():
        if kind == "lstm":
            c = rng.standard_normal(lead + (7,)).astype(dtype)
            h1, c1 = cell(x, (h, c))
            th, tc = tcell(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
            assert_close(h1, th, dtype, "h")
            assert_close(c1, tc, dtype, "c")
            h0, c0 = cell(x)
            th0, tc0 = tcell(torch.from_numpy(x))
            assert_close(h0, th0, dtype, "h from zeros")
            assert_close(c0, tc0, dtype, "c from zeros")
        else:
            assert_close(cell(x, h), tcell(torch.from_numpy(x), torch.from_numpy(h)), dtype, "h")
            assert_close(cell(x), tcell(torch.from_numpy(x)), dtype, "h from zeros")


def test_cell_does_not_modify_inputs(rng):
    cell, _ = make_pair("lstm", 3, 4, "float64", table=CELLS)
    x, h, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    h_copy, c_copy = h.copy(), c.copy()
    cell(x, (h, c))
    np.testing.assert_array_equal(h, h_copy)
    np.testing.assert_array_equal(c, c_copy)
