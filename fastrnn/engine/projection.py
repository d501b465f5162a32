"""A recurrence's input projection, made when the recurrence needs it."""

from typing import NamedTuple

import numpy as np

from .. import pairs
from ..linalg import gemm
from . import reuse


class Projection(NamedTuple):
    """``X @ w_ih.T`` (``X`` (T·B, I), ``w_ih`` (G·H, I)) as ``shape`` (T, B, G·H), not
    computed yet (:meth:`CPUBackend.input_projection`); ``stored`` is a quantized
    model's ``(stored w_ih.T, scales)``, or None."""

    X: object
    w_ih: object
    shape: tuple
    stored: object = None

    def compute(self):
        X, stored = self.X, self.stored
        if stored is not None and pairs_pay(stored[0]) and X.dtype == np.float32:
            out = reuse.empty((X.shape[0], stored[0].shape[1]), np.float32)
            return pairs.pairs_product(np.ascontiguousarray(X), stored[0], out).reshape(self.shape)
        return gemm(X, self.w_ih.T).reshape(self.shape)


def pairs_pay(stored):
    """Whether products with a quantized model's ``stored`` weights run on bfloat16
    pairs (:mod:`fastrnn.pairs`): bfloat16 bits that never change, on a CPU with
    ``vdpbf16ps``; then at every batch size, so that a row's result does not depend on
    the rows beside it."""
    return (
        stored.dtype == np.uint16
        and not stored.flags.writeable
        and stored.flags.owndata
        and stored.flags.c_contiguous
        and pairs.available()
    )
