import numpy as np

from fastrnn.engine import reuse


def test_a_block_is_handed_out_again_only_when_nothing_views_it():
    # large per-call arrays (a training step's tape and gradients) reuse the memory
    # of arrays that are gone, never of one that a view (or a torch tensor) still holds
    shape = (reuse.REUSE_MIN_BYTES // 4 + 8,)
    a = reuse.empty(shape, np.float32)
    a[:] = 1
    view = a[::2]
    del a
    b = reuse.empty(shape, np.float32)
    assert not np.shares_memory(b, view)  # a view of the first array is alive
    address = view.__array_interface__["data"][0]
    del view
    c = reuse.empty(shape, np.float32)
    assert c.__array_interface__["data"][0] == address  # its block, now free
    assert c.shape == shape and c.dtype == np.float32 and c.flags.c_contiguous
    assert not np.shares_memory(b, c)


def test_small_arrays_and_other_sizes_are_fresh():
    small = reuse.empty((8,), np.float64)
    assert small.base is None
    n = reuse.REUSE_MIN_BYTES // 8
    x = reuse.empty((n,), np.float64)
    address = x.__array_interface__["data"][0]
    del x
    y = reuse.empty((n + 1,), np.float64)  # another size: another block
    assert y.__array_interface__["data"][0] != address


def test_idle_blocks_are_dropped_past_the_limit(monkeypatch):
    monkeypatch.setattr(reuse, "REUSE_IDLE_BYTES", 3 * reuse.REUSE_MIN_BYTES)
    monkeypatch.setattr(reuse, "_BLOCKS", {})
    for k in range(6):  # six sizes, each freed at once: idle
        reuse.empty((reuse.REUSE_MIN_BYTES + 64 * k,), np.uint8)
    kept = sum(nbytes * len(blocks) for nbytes, blocks in reuse._BLOCKS.items())
    assert kept <= 4 * reuse.REUSE_MIN_BYTES + 64 * 15  # the limit, and the newest
