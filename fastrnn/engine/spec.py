"""What the engine needs to know about a model: :class:`Spec`."""

from dataclasses import dataclass

import numpy as np

from .. import gru, lstm, rnn

#: Cell type -> its kernel module (``cell_step``, ``backward_step`` and the gate counts).
CELLS = {"LSTM": lstm, "GRU": gru, "RNN": rnn}
#: Nonlinearity of an Elman RNN -> the code the kernels branch on.
ACTIVATIONS = dict(rnn.ACTIVATIONS)


@dataclass(frozen=True)
class Spec:
    """The configuration of a recurrent stack, as the engine computes it.

    Parameters
    ----------
    cell : {"LSTM", "GRU", "RNN"}
    input_size, hidden_size : int
    num_layers : int
    bias : bool
    bidirectional : bool
    proj_size : int
        LSTM only; 0 for none.
    nonlinearity : {"tanh", "relu"}
        RNN only.
    dropout : float
        Inter-layer dropout probability (the masks are the caller's; see
        :func:`fastrnn.engine.scaled_masks`).
    dtype : numpy.dtype
    """

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    bidirectional: bool = False
    proj_size: int = 0
    nonlinearity: str = "tanh"
    dropout: float = 0.0
    dtype: np.dtype = np.dtype(np.float32)

    @property
    def kernels(self):
        """The cell type's kernel module."""
        return CELLS[self.cell]

    @property
    def gates(self):
        """Pre-activation rows per hidden unit (LSTM 4, GRU 3, RNN 1)."""
        return CELLS[self.cell].GATES

    @property
    def tape_gates(self):
        """Activations per hidden unit that a training tape keeps."""
        return CELLS[self.cell].TAPE_GATES

    @property
    def activation(self):
        """The nonlinearity's code for the kernels (0 tanh, 1 relu)."""
        return ACTIVATIONS[self.nonlinearity]

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        """Feature size of ``h``: ``proj_size`` if set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    @property
    def has_cell_state(self):
        return self.cell == "LSTM"

    def param_count(self):
        """Number of parameters, computed without listing them (cheap for any size)."""
        G, H, P, D = self.gates, self.hidden_size, self.output_size, self.num_directions
        rest = G * H * P + (2 * G * H if self.bias else 0) + (P * H if self.proj_size else 0)
        first = G * H * self.input_size + rest
        later = G * H * D * P + rest
        return D * (first + (self.num_layers - 1) * later)

    def param_shapes(self):
        """torch's parameter names and shapes, in torch's order."""
        G, H, P = self.gates * self.hidden_size, self.hidden_size, self.output_size
        shapes = {}
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else self.num_directions * P
            for d in range(self.num_directions):
                sfx = suffix(layer, d)
                shapes[f"weight_ih{sfx}"] = (G, in_size)
                shapes[f"weight_hh{sfx}"] = (G, P)
                if self.bias:
                    shapes[f"bias_ih{sfx}"] = (G,)
                    shapes[f"bias_hh{sfx}"] = (G,)
                if self.proj_size:
                    shapes[f"weight_hr{sfx}"] = (P, H)
        return shapes

    def state_shapes(self, batch):
        """Shapes of ``h`` and ``c`` for ``batch`` rows (``None``: unbatched)."""
        lead = (self.num_layers * self.num_directions,)
        b = () if batch is None else (batch,)
        return lead + b + (self.output_size,), lead + b + (self.hidden_size,)


def suffix(layer, direction):
    """torch's parameter-name suffix of one layer and direction: ``_l0``, ``_l1_reverse``."""
    return f"_l{layer}" + ("_reverse" if direction else "")
