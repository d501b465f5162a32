"""Attention over NumPy arrays (and device arrays), forward and backward.

Four scoring rules, each with ``f(...)``, ``f_train(...) -> (..., tape)`` and
``f_backward(tape, grad) -> gradients``:

* :func:`scaled_dot_product` — ``softmax(Q Kᵀ · scale + mask) V`` over any
  leading (batch, head) dimensions;
* :func:`additive` — Bahdanau: ``score_j = v · tanh(W_q q + W_k k_j)``;
* :func:`luong` — ``dot`` (``q · k_j``), ``general`` (``q · (W k_j + b)``) and
  ``concat`` (``v · tanh(W [q; k_j] + b)``), as in PyTorch's chatbot tutorial;
* :func:`concat_attn` — the ``Attn`` module of PyTorch's seq2seq tutorial:
  ``softmax(Linear([Q, K])) · V``, then ``attn_combine([Q, applied])``.

Masks: True (or nonzero) means "attend"; a float mask is added to the
scores. A row whose keys are all masked gives zeros and zero gradients
(torch's behaviour). Softmax is max-subtracted, so float32 inputs of ±1e4
give no NaN or inf.

Memory: the scaled dot-product kernel fuses score → softmax → weighted sum
for one query row at a time and keeps a single row of scores (O(Lk) per row);
training stores the output and each row's log-sum-exp, and the backward pass
**recomputes** the scores from Q and K (cheaper than storing the Lq × Lk
probabilities, which is what dominates memory at long lengths). The additive
rules store their key projections (already needed for the forward GEMM) and
recompute the tanh in the backward pass.

One module per scoring rule (:mod:`.sdpa`, :mod:`.additive`, :mod:`.luong`,
:mod:`.tutorial`), each with its CUDA twin beside it (``sdpa_cuda`` ...): device
arrays given to a function here run its twin, imported on first use.
"""

from ._common import AttentionTape
from .additive import additive, additive_backward, additive_train
from .luong import luong, luong_backward, luong_train
from .sdpa import scaled_dot_product, scaled_dot_product_backward, scaled_dot_product_train
from .tutorial import concat_attn, concat_attn_backward, concat_attn_train

__all__ = [
    "scaled_dot_product",
    "scaled_dot_product_train",
    "scaled_dot_product_backward",
    "additive",
    "additive_train",
    "additive_backward",
    "luong",
    "luong_train",
    "luong_backward",
    "concat_attn",
    "concat_attn_train",
    "concat_attn_backward",
    "AttentionTape",
]
