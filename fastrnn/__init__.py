"""fastrnn: Numba-accelerated recurrent networks over NumPy arrays.

Layers (``RNN``, ``LSTM``, ``GRU``) and cells (``RNNCell``, ``LSTMCell``,
``GRUCell``) with torch.nn's arguments, parameter names and semantics.
The core depends on NumPy and Numba only; it never imports torch.
"""

from . import attention, cuda, reference
from ._version import __version__
from .cells import GRUCell, LSTMCell, RNNCell
from .io import load, save
from .layers import GRU, LSTM, RNN
from .training import Gradients, Tape, clip_grad_norm

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
    "Gradients",
    "Tape",
    "attention",
    "cuda",
    "reference",
    "__version__",
]
