"""How many threads fastrnn computes on, and the pool that runs them.

The count (:func:`set_num_threads`, :func:`get_num_threads`) is process-wide, like
``torch.set_num_threads``: by default the number of CPUs this process may run on (its
affinity mask, not the machine's core count), or ``FASTRNN_NUM_THREADS``.

Work is split into independent pieces (:func:`run`): batch rows of a whole sequence,
forward or backward, with no synchronisation between pieces until they are all done.
The calling thread computes the first piece, persistent worker threads the others
(the kernels release the GIL). Pieces never wait on each other, so two Python threads
running models at once cannot deadlock: a piece waits at most for a worker to be free.
A piece runs single-threaded BLAS (fastrnn's own threads are the parallelism), and
calls from a worker run their pieces inline, never nested.
"""

import operator
import os
import threading
import warnings

_ENV = "FASTRNN_NUM_THREADS"
_LOCK = threading.Lock()
_STATE = {"threads": None, "explicit": False, "pool": None, "pool_size": 0}
_LOCAL = threading.local()  # .depth: > 0 while computing a piece; .blas: its BLAS count


def available_cpus():
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _checked(n, name):
    """``n`` as a thread count for argument ``name``: a positive integer, clamped (with a
    warning) to the CPUs this process may run on."""
    if isinstance(n, bool) or not hasattr(type(n), "__index__"):
        raise ValueError(f"{name} must be a positive integer; got {n!r}")
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"{name} must be a positive integer; got {n}")
    cpus = available_cpus()
    if n > cpus:
        warnings.warn(
            f"{name}={n} is more than the {cpus} CPU(s) this process may run on; using {cpus}",
            RuntimeWarning,
            stacklevel=3,
        )
        n = cpus
    return n


def set_num_threads(n):
    """Compute on ``n`` threads from now on (process-wide).

    Parameters
    ----------
    n : int
        A positive number of threads. More than the CPUs this process may run on is
        clamped to that number, with a ``RuntimeWarning``.

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer.
    """
    n = _checked(n, "n")
    with _LOCK:
        _STATE["threads"] = n
        _STATE["explicit"] = True


def get_num_threads():
    """The number of threads fastrnn computes on.

    Returns
    -------
    int
        What :func:`set_num_threads` set; before that, ``FASTRNN_NUM_THREADS`` if the
        environment has it, else the number of CPUs this process may run on.
    """
    n = _STATE["threads"]
    if n is None:
        text = os.environ.get(_ENV, "").strip()
        if text:
            try:
                value = int(text)
            except ValueError:
                raise ValueError(
                    f"environment variable {_ENV} must be a positive integer; got {text!r}"
                ) from None
            n = _checked(value, _ENV)
            explicit = True
        else:
            n, explicit = available_cpus(), False
        with _LOCK:
            if _STATE["threads"] is None:
                _STATE["threads"], _STATE["explicit"] = n, explicit
            n = _STATE["threads"]
    return n


def was_set():
    """Whether the count was chosen (:func:`set_num_threads` or ``FASTRNN_NUM_THREADS``)
    rather than defaulted: the PyTorch bridge follows torch's count unless it was."""
    get_num_threads()
    return _STATE["explicit"]


class following:
    """Context manager: in this thread, compute on ``n`` threads inside unless fastrnn's
    count was chosen (:func:`was_set`). The PyTorch bridge follows torch's count this way."""

    __slots__ = ("n", "previous")

    def __init__(self, n):
        self.n = n
        self.previous = None

    def __enter__(self):
        self.previous = getattr(_LOCAL, "count", None)
        if not was_set():
            _LOCAL.count = max(1, min(int(self.n), available_cpus()))

    def __exit__(self, *exc):
        _LOCAL.count = self.previous
        return False


def current():
    """How many threads a computation started here may use: this thread's
    :class:`following` count, else :func:`get_num_threads`; 1 inside a piece of
    :func:`run` (pieces never nest)."""
    if inside():
        return 1
    return getattr(_LOCAL, "count", None) or get_num_threads()


def split(rows, min_rows, threads=None):
    """``rows`` cut into at most ``threads`` contiguous ``(start, stop)`` ranges of at
    least ``min_rows`` each, as even as possible; one range inside a piece of :func:`run`
    (pieces never nest). ``threads`` defaults to this thread's :class:`following` count,
    else :func:`get_num_threads`."""
    threads = current() if threads is None or inside() else threads
    k = max(1, min(threads, rows // max(min_rows, 1)))
    bounds = [rows * i // k for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


def run(fn, pieces, hold=False):
    """Call ``fn(*piece)`` for every piece, on as many threads as there are pieces, and
    return once all are done (re-raising the first piece's error, if any). Inside a
    piece, NumPy's BLAS runs on one thread. With ``hold``, each piece's thread is held on
    a CPU of its own (:func:`placement`; the caller's affinity is restored afterwards):
    for pieces that wait for each other (a team), which Linux put on one vCPU for whole
    calls here. Independent pieces are left to the scheduler: held, a piece next to
    torch's spinning OpenMP thread cannot move away (an RNN training step through the
    bridge on two cores: 26.3 ms held, 22.6 ms free)."""
    if len(pieces) == 1:
        fn(*pieces[0])
        return
    cpus = (placement(len(pieces)) if hold else None) or [None] * len(pieces)

    def held(cpu, piece):
        with held_on(cpu):
            fn(*piece)

    futures = [
        _pool(len(pieces) - 1).submit(held, cpu, piece) for cpu, piece in zip(cpus[1:], pieces[1:])
    ]
    try:
        with _Piece(), single_blas(), held_on(cpus[0]):
            fn(*pieces[0])
    finally:
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def inside():
    """Whether this thread is computing a piece of :func:`run` (pieces never nest)."""
    return getattr(_LOCAL, "depth", 0) > 0


class _Piece:
    """This thread computes a piece: :func:`split` gives it one range (no nesting)."""

    def __enter__(self):
        _LOCAL.depth = getattr(_LOCAL, "depth", 0) + 1

    def __exit__(self, *exc):
        _LOCAL.depth -= 1
        return False


def _mark_worker():
    _LOCAL.depth = 1  # a worker only ever computes pieces
    _set_blas(1)


def _forget_pool():
    """In a forked child: the parent's workers do not exist here; start a new pool."""
    _STATE["pool"], _STATE["pool_size"] = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _pool(helpers):
    from concurrent.futures import ThreadPoolExecutor  # on first use: ~3 ms of import

    with _LOCK:
        if _STATE["pool_size"] < helpers:
            old = _STATE["pool"]
            _STATE["pool"] = ThreadPoolExecutor(
                helpers, thread_name_prefix="fastrnn", initializer=_mark_worker
            )
            _STATE["pool_size"] = helpers
            if old is not None:
                old.shutdown(wait=False)
        return _STATE["pool"]


_GETCPU = []  # [libc's sched_getcpu or None], found on first use


def _current_cpu():
    """The CPU this thread runs on now, or None where that cannot be told."""
    if not _GETCPU:
        try:
            import ctypes

            _GETCPU.append(ctypes.CDLL(None).sched_getcpu)
        except (OSError, AttributeError):
            _GETCPU.append(None)
    return _GETCPU[0]() if _GETCPU[0] is not None else None


def placement(pieces):
    """One CPU per piece, the caller's current CPU first, from the CPUs the calling
    thread may run on; None where there are fewer such CPUs than pieces (or no affinity
    here)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(allowed) < pieces:
        return None
    here = _current_cpu()
    if here in allowed:
        allowed.remove(here)
        allowed.insert(0, here)
    return allowed[:pieces]


class held_on:
    """Context manager: this thread runs on ``cpu`` only inside (its affinity restored
    on exit); nothing where ``cpu`` is None."""

    __slots__ = ("cpu", "previous")

    def __init__(self, cpu):
        self.cpu, self.previous = cpu, None

    def __enter__(self):
        if self.cpu is not None:
            self.previous = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.cpu})

    def __exit__(self, *exc):
        if self.previous is not None:
            os.sched_setaffinity(0, self.previous)
        return False


# ---------------------------------------------------------------------- BLAS threads
def _openblas():
    """NumPy's bundled OpenBLAS library (ctypes), or None (another BLAS, or none found)."""
    import ctypes
    import glob

    import numpy as np

    here = os.path.dirname(np.__file__)
    for path in sorted(glob.glob(os.path.join(here, "..", "numpy.libs", "*openblas*"))):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _openblas_local():
    """NumPy's OpenBLAS ``openblas_set_num_threads_local`` (a per-thread count), or None."""
    import ctypes

    fn = getattr(_openblas(), "openblas_set_num_threads_local", None)
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


def blas_core():
    """The CPU kernel family NumPy's OpenBLAS chose (e.g. ``"Haswell"``, ``"SkylakeX"``),
    lower-case; "" where it cannot be told."""
    import ctypes

    lib = _openblas()
    for name in ("scipy_openblas_get_corename64_", "openblas_get_corename"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            return (fn() or b"").decode(errors="replace").lower()
    return ""


_BLAS = []  # [the function or None], found on first use


def _set_blas(n):
    """Set this thread's NumPy BLAS thread count where NumPy's OpenBLAS allows it;
    returns the previous one (None where it cannot be set)."""
    if not _BLAS:
        _BLAS.append(_openblas_local())
    if _BLAS[0] is None or n is None:
        return None
    previous = getattr(_LOCAL, "blas", None)
    if previous != n:
        previous = _BLAS[0](n)
        _LOCAL.blas = n
    return previous


class single_blas:
    """Context manager: this thread's NumPy BLAS calls run single-threaded inside.

    fastrnn's threads are its parallelism; BLAS's own pool would spin after each call
    on the cores those threads are about to use.
    """

    __slots__ = ("previous",)

    def __enter__(self):
        self.previous = _set_blas(1)

    def __exit__(self, *exc):
        _set_blas(self.previous)
        return False
