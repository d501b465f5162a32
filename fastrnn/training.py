"""Training support: the tape, gradients, the backward driver and gradient clipping.

The backward pass of a layer-direction (``backward_recurrence``) is sequential
only in the recurrent gradient ``dh_{t-1} = da_t W_hh``; every weight gradient
and the input gradient are single matrix products over the whole sequence,
done by the model (``layers._RNNBase.backward``).
"""

import math
from dataclasses import dataclass, field

import numpy as np

from . import recurrence
from .linalg import gemm

__all__ = ["Tape", "Gradients", "clip_grad_norm"]


@dataclass
class Tape:
    """What ``backward`` needs from ``forward_train``.

    Per layer and direction (index ``layer * num_directions + direction``):
    the activated gates (T, B, k·H), the hidden state entering each step
    (T, B, H_out) and, for LSTM, the cell state entering each step (T, B, H).
    Per layer: its input (after inter-layer dropout). Cell states at step t
    and LSTM's ``o * tanh(c)`` are recomputed in the backward pass rather than
    stored. A tape of a run on device arrays holds device arrays (and ``device``,
    the lengths on the device).
    """

    model_id: int
    signature: tuple
    y_shape: tuple
    unbatched: bool
    lengths: np.ndarray
    layer_inputs: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    device: object = None  # the lengths as a device array when the tape lives on the GPU
    weights_version: int = 0  # the model's ``weights_version`` when the tape was recorded

    def __repr__(self):
        nbytes = sum(a.nbytes for s in self.steps for a in s) + sum(
            a.nbytes for a in self.layer_inputs
        )
        return f"Tape(y_shape={self.y_shape}, {len(self.steps)} recurrences, {nbytes} bytes)"


@dataclass
class Gradients:
    """Result of ``backward``.

    Attributes
    ----------
    input : ndarray
        Gradient w.r.t. ``x``, same shape as ``x``.
    hx : ndarray or tuple of ndarray
        Gradient w.r.t. the initial state, shaped like ``hx`` (``(h0, c0)`` for
        LSTM); when ``hx`` was omitted, the gradient w.r.t. the implicit zeros.
    params : dict of str to ndarray
        Gradient of every parameter, under torch's names and shapes.
    """

    input: np.ndarray
    hx: object
    params: dict


def empty3(dtype):
    """A (1, 0, 0) placeholder for an absent tape or workspace."""
    return np.empty((1, 0, 0), dtype)


def backward_recurrence(
    kern, gates, h_prev, c_prev, w_hh, w_hr, lengths, reverse, mode, dy, dh, dc, blas_min_batch
):
    """Backward through one layer-direction's recurrence.

    ``dh``/``dc`` enter as the final-state gradients and leave as the
    initial-state gradients. Returns ``(dgx, dgh, dhp, mt)``: the
    pre-activation gradients for ``W_ih`` and ``W_hh`` (the same array unless the
    cell type distinguishes them), and with projection the ``dh`` and
    ``o * tanh(c)`` sequences whose product is ``W_hr``'s gradient.
    """
    T, B, _ = gates.shape
    GH = w_hh.shape[0]
    H = c_prev.shape[2] if c_prev.shape[0] else GH // kern.GATES
    dtype = gates.dtype
    dgx = np.empty((T, B, GH), dtype)
    dgh = np.empty_like(dgx) if kern.SEPARATE_DGH else dgx
    proj = w_hr.shape[0] > 0
    dhp = np.empty((T, B, dh.shape[1]), dtype) if proj else empty3(dtype)
    mt = np.empty((T, B, H), dtype) if proj else empty3(dtype)
    dm = np.empty((B, H), dtype)
    if c_prev.shape[0] == 0:
        c_prev = empty3(dtype)
    if B < blas_min_batch:
        recurrence.LOOPS[kern].backward_sequence(
            gates,
            h_prev,
            c_prev,
            w_hh,
            w_hr,
            lengths,
            reverse,
            mode,
            dy,
            dh,
            dc,
            dgx,
            dgh,
            dhp,
            mt,
            dm,
        )
        return dgx, dgh, dhp, mt
    tmp = np.empty_like(dh)
    last_c = c_prev.shape[0] - 1
    # Same values as w_hh, laid out column-major once, so that every per-step product
    # finds the transposed operand contiguous (what GEMM libraries want as "B^T").
    w_hh = np.ascontiguousarray(w_hh.T).T
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp = t if proj else 0
        kern.backward_step(
            t,
            lengths,
            gates[t],
            h_prev[t],
            c_prev[min(t, last_c)],
            w_hr,
            dy[t],
            dh,
            dc,
            dgx[t],
            dgh[t],
            dhp[tp],
            mt[tp],
            dm,
            mode,
        )
        gemm(dgh[t], w_hh, out=tmp)
        dh += tmp
    return dgx, dgh, dhp, mt


def _vector_norm(values, p):
    """``torch.linalg.vector_norm(values, p)`` in float64: p may be inf, -inf, 0 or any
    other real number."""
    a = np.abs(np.asarray(values, np.float64)).ravel()
    if p == np.inf:
        return float(a.max()) if a.size else 0.0
    if p == -np.inf:
        return float(a.min()) if a.size else np.inf
    if p == 0:
        return float(np.count_nonzero(a))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return float(np.sum(a**p) ** (1.0 / p))


def clip_grad_norm(grads, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale gradients in place so their joint norm is at most ``max_norm``.

    torch.nn.utils.clip_grad_norm_'s rule: the norm of the arrays' norms (each
    ``torch.linalg.vector_norm`` of order ``norm_type``), then every array is
    multiplied by ``min(1, max_norm / (total_norm + 1e-6))``, so a non-finite norm
    (NaN or inf gradients) propagates to every gradient, as in torch, unless
    ``error_if_nonfinite`` asks for an error.

    Parameters
    ----------
    grads : dict of str to ndarray, or iterable of ndarray
        E.g. ``Gradients.params``; modified in place.
    max_norm : float
    norm_type : float, default 2.0
        Any real number or ``inf``/``-inf`` (``0`` counts non-zero entries).
    error_if_nonfinite : bool, default False
        Raise ``RuntimeError`` instead of scaling when the total norm is NaN or inf.

    Returns
    -------
    total_norm : float
        The norm before clipping.
    """
    arrays = list(grads.values()) if isinstance(grads, dict) else list(grads)
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            raise TypeError(
                f"grads must hold floating-point ndarrays; item {i} is {type(a).__name__}"
                + (f" of dtype {a.dtype}" if isinstance(a, np.ndarray) else "")
            )
    try:
        norm_type = float(norm_type)
        max_norm = float(max_norm)
    except (TypeError, ValueError):
        raise TypeError(
            f"max_norm and norm_type must be numbers; got {max_norm!r} and {norm_type!r}"
        ) from None
    if math.isnan(norm_type):
        raise ValueError("norm_type must be a real number or inf/-inf; got nan")
    if math.isnan(max_norm):
        raise ValueError("max_norm must be a number; got nan")
    if not arrays:
        return 0.0
    total = _vector_norm([_vector_norm(a, norm_type) for a in arrays], norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {norm_type} of the gradients is non-finite ({total}), "
            "so it cannot be clipped. Pass error_if_nonfinite=False to scale anyway (the "
            "gradients then become NaN, as in torch)"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        coef = max_norm / (total + 1e-6)
    coef = coef if math.isnan(coef) else min(coef, 1.0)
    if coef != 1.0:
        with np.errstate(invalid="ignore", over="ignore"):
            for a in arrays:
                a *= coef
    return total
