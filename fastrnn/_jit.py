"""The one decorator every CPU kernel uses.

``error_model="numpy"`` lets division vectorise (Python's model inserts a
zero-division check per element); ``fastmath`` is limited to reassociation and
contraction so dot-product reductions vectorise while NaN/inf semantics and
exact division stay intact. Kernels never allocate (the caller owns every buffer), so
they are compiled without Numba's reference-counting runtime (``_nrt=False``): no
reference counts on array views in the hot loops, and nothing to initialise before a
cached kernel runs.

Kernels are cached on disk (``NUMBA_CACHE_DIR``, else ``__pycache__`` beside the
package) by :class:`KernelCache`: Numba's own function cache, with three changes that
make a warm start fast and safe:

- it is set up on first use, not when the module is imported (Numba's check that the
  cache directory is writable touches the file system, a few ms per kernel);
- loading a cached kernel initialises nothing: Numba's own cache refreshes its
  compiler's registries before every load, importing and registering every
  implementation it has (about 0.3 s, most of a warm start), which machine code that
  needs no runtime does not use; a kernel compiled later gets that refresh from Numba's
  compiler itself;
- its index keys carry :data:`CACHE_TAG`, so machine code cached by a fastrnn whose
  kernels needed the runtime (or anything else this tag versions) is never loaded,
  :data:`VECTOR_BYTES`, which the kernels' code is generated for, and a stamp of every
  module of the package (:func:`package_stamp`): Numba checks only the file a kernel is
  defined in, and a kernel compiles in the code of the kernels it calls from other
  modules (an edit of ``tiles.py`` left the loops of ``recurrence.py`` running the old
  tile layout from the cache).
"""

import functools
import hashlib
import os

import numba
from numba.core import caching

FASTMATH = {"reassoc", "contract"}

#: Options of every CPU kernel.
KERNEL_OPTIONS = dict(nogil=True, error_model="numpy", fastmath=FASTMATH, _nrt=False)

#: Part of every cache key: change it when the kernels' options change.
CACHE_TAG = "fastrnn-kernel-v3"


def _vector_bytes():
    """Bytes in one SIMD vector of the CPU Numba compiles for: 64 where it has AVX-512
    (AVX512F), else 32 (AVX2). ``FASTRNN_VECTOR_BYTES`` (32 or 64) overrides it; a
    ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` set (portable machine code) gives 32."""
    forced = os.environ.get("FASTRNN_VECTOR_BYTES", "")
    if forced in ("32", "64"):
        return int(forced)
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        return 32
    try:
        from llvmlite import binding

        return 64 if binding.get_host_cpu_features().get("avx512f", False) else 32
    except Exception:  # a host whose features LLVM cannot read: the narrower width
        return 32


#: Bytes in one SIMD vector of the packed tiles and panels (``fastrnn.tiles``): the
#: kernels that use them are generated for this width, and a cached kernel is found
#: under it (part of every cache key).
VECTOR_BYTES = _vector_bytes()


@functools.lru_cache(maxsize=4)
def package_stamp(root):
    """A hash of the size and modification time of every ``.py`` file below ``root``
    (the package; ``__pycache__`` skipped): it changes whenever a module is edited or
    replaced, taken once per process."""
    digest = hashlib.sha1()
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        for name in sorted(n for n in names if n.endswith(".py")):
            info = os.stat(os.path.join(folder, name))
            relative = os.path.relpath(os.path.join(folder, name), root)
            digest.update(f"{relative}:{info.st_size}:{info.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


# The Numba internals KernelCache builds on; without any of them it is Numba's own cache.
_INTERNALS = ("_load_overload", "_guard_against_spurious_io_errors", "_index_key")
_LIGHT_LOAD = all(hasattr(caching.FunctionCache, name) for name in _INTERNALS)


class KernelCache(caching.FunctionCache):
    """Numba's on-disk function cache, set up on first use, loading without a refresh,
    its keys tagged with :data:`CACHE_TAG`."""

    def __init__(self, py_func):
        self._pending = py_func  # Numba's set-up runs when an attribute is first missed

    def __getattr__(self, name):
        py_func = self.__dict__.pop("_pending", None)
        if py_func is None:
            raise AttributeError(name)
        super().__init__(py_func)
        return getattr(self, name)

    def _index_key(self, sig, codegen):
        stamp = package_stamp(os.path.dirname(os.path.abspath(__file__)))
        return (*super()._index_key(sig, codegen), CACHE_TAG, VECTOR_BYTES, stamp)

    def load_overload(self, sig, target_context):
        if not _LIGHT_LOAD:
            return super().load_overload(sig, target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)
        return None  # the guard swallowed an I/O error: compile instead


def _jit(fn, options):
    dispatcher = numba.njit(**options)(fn)
    if isinstance(dispatcher, numba.core.dispatcher.Dispatcher):  # not NUMBA_DISABLE_JIT
        dispatcher._cache = KernelCache(dispatcher.py_func)  # Numba's enable_caching, ours
    return dispatcher


def kernel(fn):
    """Compile ``fn`` as a cached CPU kernel."""
    return _jit(fn, KERNEL_OPTIONS)
