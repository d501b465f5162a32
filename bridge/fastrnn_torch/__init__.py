"""fastrnn_torch: torch.nn recurrent modules computed by fastrnn's kernels.

``RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell``, ``GRUCell`` are drop-in
subclasses of their torch.nn namesakes; ``convert(model)`` swaps them in place
inside any model, and ``export(module, path)`` writes weights that the core
``fastrnn.load`` reads without torch.
"""

from fastrnn import __version__

from . import _compiled  # noqa: F401  (registers the custom operators for torch.compile)
from .attention import AdditiveAttention, Attn, LuongAttention, scaled_dot_product_attention
from .convert import convert, export
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "convert",
    "export",
    "scaled_dot_product_attention",
    "Attn",
    "AdditiveAttention",
    "LuongAttention",
    "__version__",
]
