"""Large per-call arrays in memory that earlier calls have finished with.

A training step allocates the same large arrays every time: the tape its forward
leaves (an LSTM's gates are ``T·B·4H`` elements, 6.5 MB at T=50, B=32, H=256 in
float32), the backward's gate gradients, the weight gradients. Freshly mapped memory
costs a page fault per 4 KB on first touch, and the C allocator hands large blocks back
to the system as soon as they are freed: through the PyTorch bridge, where torch's own
tensors come and go between them, a batch-32 LSTM training step took about 1,800 page
faults (3 ms of 27) that torch.nn's own step does not take. Here such arrays are views
of blocks kept from call to call: a block whose arrays are all gone (no view of it is
alive: its reference count says so) is handed out again.
"""

import sys
import threading
from math import prod

import numpy as np

#: Bytes from which an array is a view of a kept block (smaller ones are cheap to map).
REUSE_MIN_BYTES = 1 << 20
#: Bytes of blocks kept while no array uses them; past it the oldest idle go.
REUSE_IDLE_BYTES = 256 << 20

_LOCK = threading.Lock()
_BLOCKS = {}  # nbytes -> [uint8 arrays], oldest first


def empty(shape, dtype):
    """``np.empty(shape, dtype)``, from a kept block when it is large."""
    dtype = np.dtype(dtype)
    nbytes = prod(shape) * dtype.itemsize
    if nbytes < REUSE_MIN_BYTES:
        return np.empty(shape, dtype)
    with _LOCK:
        blocks = _BLOCKS.setdefault(nbytes, [])
        for block in blocks:
            if _idle(block):
                break
        else:
            _trim()
            block = np.empty(nbytes, np.uint8)
            blocks.append(block)
        return block.view(dtype).reshape(shape)


def _idle(block):
    """Whether no array views ``block``: its only references are its list's, the
    caller's loop variable, this parameter and ``getrefcount``'s argument."""
    return sys.getrefcount(block) == 4


def _trim():
    """Drop the oldest idle blocks while they hold more than :data:`REUSE_IDLE_BYTES`
    (each size's list is oldest first)."""
    idle = 0
    for nbytes, blocks in _BLOCKS.items():
        for block in blocks:
            if _idle(block):
                idle += nbytes
    for nbytes, blocks in _BLOCKS.items():
        kept = []
        for block in blocks:
            if idle > REUSE_IDLE_BYTES and _idle(block):
                idle -= nbytes
            else:
                kept.append(block)
        blocks[:] = kept
