"""fastrnn: Numba-accelerated recurrent networks over NumPy arrays.

Layers (``RNN``, ``LSTM``, ``GRU``) and cells (``RNNCell``, ``LSTMCell``,
``GRUCell``) with torch.nn's arguments, parameter names and semantics.
The core depends on NumPy and Numba only; it never imports torch.

``attention``, ``reference`` and ``io`` (``load``, ``save``) are imported on first use (a
service that only runs a layer does not pay for them at start-up).
"""

import contextlib
import gc
import importlib


@contextlib.contextmanager
def _import_without_collections():
    """Run the imports below (Numba's included) without the garbage collector.

    Importing Numba creates about 90 000 objects, none of them garbage; the collector
    traverses them over and over as they age (about 70 ms of a 0.5 s warm start on this
    project's VMs). Here they are moved straight to the oldest generation instead
    (``freeze`` then ``unfreeze``), where the next full collection finds them as it would
    have. Nothing is left disabled or frozen: a process that froze objects itself, or
    turned the collector off, is left exactly as it was.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        gc.enable()


with _import_without_collections():
    from . import cuda
    from ._version import __version__
    from .cells import GRUCell, LSTMCell, RNNCell
    from .layers import GRU, LSTM, RNN
    from .threads import get_num_threads, set_num_threads
    from .training import Gradients, Tape, clip_grad_norm

#: Public name -> (module, attribute or None for the module itself), imported on first use.
_LAZY = {
    "attention": (".attention", None),
    "reference": (".reference", None),
    "io": (".io", None),
    "load": (".io", "load"),
    "save": (".io", "save"),
}


def __getattr__(name):
    found = _LAZY.get(name)
    if found is None:
        raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")
    module = importlib.import_module(found[0], __name__)
    value = module if found[1] is None else getattr(module, found[1])
    globals()[name] = value  # later lookups find it without coming here
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "save",
    "load",
    "clip_grad_norm",
    "set_num_threads",
    "get_num_threads",
    "Gradients",
    "Tape",
    "attention",
    "cuda",
    "reference",
    "__version__",
]
