"""The one decorator every CPU kernel uses.

``error_model="numpy"`` lets division vectorise (Python's model inserts a
zero-division check per element); ``fastmath`` is limited to reassociation and
contraction so dot-product reductions vectorise while NaN/inf semantics and
exact division stay intact.
"""

import functools

import numba

FASTMATH = {"reassoc", "contract"}

#: Options of every CPU kernel (also given to ``numba.extending.overload`` implementations).
KERNEL_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=FASTMATH)

kernel = functools.partial(numba.njit, **KERNEL_OPTIONS)

#: A kernel that only other kernels call: no Python entry point is compiled for it
#: (Numba's CPython wrapper costs a tenth of a second or more of cold start each).
inner_kernel = functools.partial(numba.njit, no_cpython_wrapper=True, **KERNEL_OPTIONS)
