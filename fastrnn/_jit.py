"""The one decorator every CPU kernel uses.

``error_model="numpy"`` lets division vectorise (Python's model inserts a
zero-division check per element); ``fastmath`` is limited to reassociation and
contraction so dot-product reductions vectorise while NaN/inf semantics and
exact division stay intact.
"""

import functools

import numba

FASTMATH = {"reassoc", "contract"}

kernel = functools.partial(
    numba.njit, cache=True, nogil=True, error_model="numpy", fastmath=FASTMATH
)
