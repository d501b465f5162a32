"""What a training forward leaves for its backward: :class:`Tape`, and :class:`Gradients`."""

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class Steps(NamedTuple):
    """One layer-direction's record, one row per time step.

    gates : (T, B, tape_gates * H)
        The activated gates.
    h_prev : (T, B, H_out)
        The hidden state entering each step.
    c_prev : (T, B, H), LSTM; (0, B, H) otherwise
        The cell state entering each step.
    """

    gates: object
    h_prev: object
    c_prev: object


@dataclass
class Tape:
    """What ``backward`` needs from a training forward.

    Per layer and direction (index ``layer * num_directions + direction``) a
    :class:`Steps`; per layer its input (after inter-layer dropout); the scaled
    dropout masks; the sequence lengths. Arrays are the backend's: NumPy arrays
    on the CPU, device arrays on the GPU. Cell states at step t and LSTM's
    ``o * tanh(c)`` are recomputed by the backward rather than stored.

    The remaining fields are the models' bookkeeping (which model recorded the
    tape, with which weights, and the shape of its output).
    """

    lengths: object = None
    layer_inputs: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    model_id: int = None
    signature: object = None  # the recording model's Spec
    y_shape: tuple = None
    unbatched: bool = False
    weights_version: int = 0

    def to_flat(self):
        """The arrays a caller must keep, as one flat list: every layer-direction's
        ``gates, h_prev, c_prev``, then the inputs of layers 1 and up (layer 0's input
        and the masks are the caller's own; :meth:`from_flat` takes them back)."""
        flat = [a for steps in self.steps for a in steps]
        return flat + list(self.layer_inputs[1:])

    @classmethod
    def from_flat(cls, flat, x, lengths, masks, recurrences):
        """The tape whose :meth:`to_flat` is ``flat``, for input ``x`` (T, B, I), with
        ``recurrences`` layer-directions."""
        n = 3 * recurrences
        steps = [Steps(*flat[i : i + 3]) for i in range(0, n, 3)]
        return cls(lengths, [x, *flat[n:]], steps, list(masks))

    @staticmethod
    def flat_shapes(spec, T, B):
        """Shapes of :meth:`to_flat`'s arrays for a (T, B, ·) input of ``spec``."""
        D, H, P = spec.num_directions, spec.hidden_size, spec.output_size
        one = [(T, B, spec.tape_gates * H), (T, B, P), (T if spec.has_cell_state else 0, B, H)]
        return one * (spec.num_layers * D) + [(T, B, D * P)] * (spec.num_layers - 1)

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
