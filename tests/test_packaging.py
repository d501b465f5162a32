"""The core never imports torch, and its kernels load from Numba's cache in a new process."""

import os
import subprocess
import sys

from fastrnn import _jit


def test_core_does_not_import_torch():
    code = (
        "import sys, numpy as np, fastrnn; m = fastrnn.GRU(2, 3); "
        "m(np.zeros((2, 1, 2), np.float32)); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bridge_package_is_installed():
    import fastrnn_torch  # noqa: F401


# One LSTM forward and step in a fresh process; prints a digest of the outputs and how
# many kernels came from the on-disk cache.
_CACHED_RUN = """
import hashlib, numpy as np, fastrnn
from fastrnn import recurrence
m = fastrnn.LSTM(3, 5, seed=0)
x = np.linspace(-1, 1, 4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
y, (h, c) = m(x)
ys, _ = m.step(x[0], m.initial_state(2))
loops = recurrence.LOOPS[fastrnn.lstm]
hits = sum(sum(k.stats.cache_hits.values()) for k in (loops.sequence, loops.step_layer))
print(hashlib.sha256(b"".join(a.tobytes() for a in (y, h, c, ys))).hexdigest(), hits)
"""


def test_kernels_load_from_the_disk_cache_in_a_fresh_process(tmp_path):
    """The second process finds every kernel in the cache the first one wrote (fastrnn's
    KernelCache: set up lazily, loaded without Numba's refresh) and computes the same
    bits; the cache's index keys carry fastrnn's tag (so entries written with other
    kernel options never match)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def run():
        out = subprocess.run(
            [sys.executable, "-c", _CACHED_RUN], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        digest, hits = out.stdout.split()
        return digest, int(hits)

    cold, warm = run(), run()
    assert cold[1] == 0
    assert warm == (cold[0], 2)
    assert _jit._LIGHT_LOAD, "Numba's cache internals changed: fastrnn/_jit.py needs a look"
    index = next(tmp_path.rglob("*lstm_sequence*.nbi"))
    assert _jit.CACHE_TAG.encode() in index.read_bytes()


def test_lazy_submodules_resolve_on_first_use():
    """``import fastrnn`` leaves attention, reference and io unimported; each public name
    still resolves on first use, and ``dir(fastrnn)`` lists them."""
    code = (
        "import sys, fastrnn\n"
        "lazy = ('fastrnn.attention', 'fastrnn.reference', 'fastrnn.io')\n"
        "assert not any(m in sys.modules for m in lazy), [m for m in lazy if m in sys.modules]\n"
        "assert {'attention', 'reference', 'io', 'load', 'save'} <= set(dir(fastrnn))\n"
        "assert fastrnn.load is fastrnn.io.load and fastrnn.save is fastrnn.io.save\n"
        "assert callable(fastrnn.attention.scaled_dot_product)\n"
        "assert callable(fastrnn.reference.lstm_cell_backward)\n"
        "from fastrnn import attention, load\n"
        "try:\n"
        "    fastrnn.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# The collector's state before and after ``import fastrnn``, and whether a cycle made
# during the import is still collected afterwards.
_GC_AROUND_IMPORT = """
import gc, sys, weakref
{before}
enabled = gc.isenabled()
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
alive = weakref.ref(a)
del a, b
import fastrnn
assert gc.isenabled() == enabled
{after}
"""


def test_import_leaves_the_garbage_collector_as_it_found_it():
    """Importing fastrnn defers collections while Numba loads (a warm-start cost), but
    leaves the collector enabled, disabled or frozen as the process had it, and cycles
    that became garbage before the import are still collected."""
    cases = [
        ("", "gc.collect(); assert alive() is None, 'cycle not collected'"),
        ("gc.disable()", "assert not gc.isenabled()"),
        ("gc.freeze()", "assert gc.get_freeze_count() > 0, 'unfrozen'"),
    ]
    for before, after in cases:
        code = _GC_AROUND_IMPORT.format(before=before, after=after)
        subprocess.run([sys.executable, "-c", code], check=True)


def test_import_leaves_numbas_compiler_modules_unimported():
    """A warm start loads cached machine code; Numba's array and string implementations
    are needed only to compile. Importing them with fastrnn cost ~40 ms of a 0.4 s warm
    start (a module-level ``from numba.np.arrayobj import ...`` did)."""
    code = (
        "import sys, numba\n"
        "before = set(sys.modules)\n"
        "import fastrnn\n"
        "heavy = ('numba.np.arrayobj', 'numba.cpython.unicode', 'numba.np.linalg')\n"
        "new = [m for m in heavy if m in sys.modules and m not in before]\n"
        "assert not new, new\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_kernel_cache_key_changes_with_any_module_of_the_package(tmp_path):
    # Numba checks only the file a kernel is defined in; a kernel compiles in the code of
    # the kernels it calls from other modules, so every module's stamp is in the key
    from fastrnn import _jit

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    (package / "__pycache__").mkdir()
    before = _jit.package_stamp.__wrapped__(str(package))
    (package / "__pycache__" / "a.nbi").write_bytes(b"cache")  # caches do not count
    assert _jit.package_stamp.__wrapped__(str(package)) == before
    (package / "sub" / "b.py").write_text("y = 3  # edited\n")
    assert _jit.package_stamp.__wrapped__(str(package)) != before
