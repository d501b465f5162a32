"""Training support: the tape and gradients of ``forward_train`` / ``backward`` (defined
by :mod:`fastrnn.engine`), and gradient clipping."""

import math

import numpy as np

from .engine import Gradients, Tape

__all__ = ["Tape", "Gradients", "clip_grad_norm"]


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
