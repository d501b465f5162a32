"""Single-step cells: ``RNNCell``, ``LSTMCell``, ``GRUCell`` (torch.nn's ``*Cell``).

A cell is a one-layer, one-step view of the matching layer: it owns
``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` and shares these arrays
with an internal single-layer model, so the same fused kernels (and the same
backward) run for cells and layers.
"""

import numpy as np

from . import _validation as check
from ._params import ParameterMixin
from .cuda import is_device_array
from .engine.spec import ACTIVATIONS
from .layers import GRU, LSTM, RNN
from .training import Tape

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]


class _CellBase(ParameterMixin):
    mode = None
    _layer_class = None

    def __init__(
        self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype="float32", seed=None
    ):
        check.choice("nonlinearity", nonlinearity, tuple(ACTIVATIONS))
        extra = {"nonlinearity": nonlinearity} if self.mode == "RNN" else {}
        self._layer = self._layer_class(
            input_size, hidden_size, bias=bias, dtype=dtype, seed=seed, **extra
        )
        self.input_size = self._layer.input_size
        self.hidden_size = self._layer.hidden_size
        self.bias = self._layer.bias
        self.nonlinearity = nonlinearity
        self.dtype = self._layer.dtype
        # The cell's parameters are the layer's arrays under torch's cell names.
        self._params = {name[:-3]: p for name, p in self._layer.state_dict().items()}

    def _param_shapes(self):
        return {name[:-3]: shp for name, shp in self._layer._param_shapes().items()}

    @classmethod
    def param_shapes_for(cls, **config):
        """torch's parameter names and shapes of ``cls(**config)``, without building it."""
        config = dict(config)
        config.pop("seed", None)
        nonlinearity = check.choice(
            "nonlinearity", config.pop("nonlinearity", "tanh"), tuple(ACTIVATIONS)
        )
        if cls.mode == "RNN":
            config["nonlinearity"] = nonlinearity
        shapes = cls._layer_class.param_shapes_for(**config)
        return {name[:-3]: shp for name, shp in shapes.items()}

    def config(self):
        cfg = dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias)
        if self.mode == "RNN":
            cfg["nonlinearity"] = self.nonlinearity
        cfg["dtype"] = self.dtype.name
        return cfg

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        if self.nonlinearity != "tanh":
            extra += ", nonlinearity='relu'"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"

    def to_device(self):
        """Keep the parameters resident on the GPU (see ``fastrnn.LSTM.to_device``)."""
        from .cuda import require

        require(f"{type(self).__name__}.to_device()")
        self._layer.to_device()
        return self

    def device_state_dict(self):
        """The resident GPU parameters under the cell's names (see ``LSTM.device_state_dict``)."""
        return {name[:-3]: a for name, a in self._layer.device_state_dict().items()}

    @property
    def _device_params(self):
        return self._layer._device_params

    def _array(self, name, value, shape_text):
        """``check.array``, or its device twin for device arrays (no copy, no cast)."""
        if type(value) is not np.ndarray and is_device_array(value):
            from ._device_inputs import array

            return array(name, value, self.dtype, shape_text)
        return check.array(name, value, self.dtype, shape_text)

    def _check(self, x, hx):
        """Validate; return ``(x, hx)`` as a length-1 sequence and state for the layer."""
        x = self._array("input", x, f"(batch, {self.input_size})")
        if x.ndim not in (1, 2) or x.shape[x.ndim - 1] != self.input_size:
            raise ValueError(
                f"input must have shape (batch, {self.input_size}) or "
                f"({self.input_size},); got {tuple(x.shape)}"
            )
        shape = tuple(x.shape[: x.ndim - 1]) + (self.hidden_size,)
        if hx is None:
            return _lead1(x), None
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx for LSTMCell must be a tuple (h, c); got {type(hx).__name__}")
            parts = list(zip(("h", "c"), hx))
        else:
            parts = [("hx", hx)]
        states = []
        for name, value in parts:
            value = self._array(name, value, str(shape))
            check.shape(name, value, shape)
            states.append(_lead1(value))
        return _lead1(x), (tuple(states) if self.mode == "LSTM" else states[0])

    def __call__(self, x, hx=None):
        """Advance one step.

        Parameters
        ----------
        x : ndarray, shape (batch, input_size), or (input_size,) unbatched
        hx : ndarray, shape (batch, hidden_size), optional
            For LSTMCell a tuple ``(h, c)``. Zeros if omitted.

        Returns
        -------
        h' : ndarray, shape (batch, hidden_size)
            For LSTMCell ``(h', c')``. New arrays; the inputs are not modified.
        """
        x, hx = self._check(x, hx)
        _, state = self._layer(x, hx)
        return (state[0][0], state[1][0]) if self.mode == "LSTM" else state[0]

    forward = __call__

    def forward_train(self, x, hx=None):
        """One step recording a tape for :meth:`backward`.

        Returns
        -------
        ``h, c, tape`` for LSTMCell; ``h, tape`` for GRUCell and RNNCell.
        """
        x, hx = self._check(x, hx)
        _, state, tape = self._layer.forward_train(x, hx)
        if self.mode == "LSTM":
            return state[0][0], state[1][0], tape
        return state[0], tape

    def _backward(self, tape, named_grads):
        """Run the layer's backward with the state gradients ``named_grads``
        (pairs of argument name and array or None)."""
        if not isinstance(tape, Tape) or tape.model_id != id(self._layer):
            raise ValueError("tape must come from this cell's forward_train")
        shape = tape.y_shape[1:]
        state = None
        if any(g is not None for _, g in named_grads):
            state = []
            for name, g in named_grads:
                if g is None:
                    g = np.zeros(shape, self.dtype)
                g = self._array(name, g, str(shape))
                check.shape(name, g, shape)
                state.append(_lead1(g))
            state = tuple(state) if self.mode == "LSTM" else state[0]
        grads = self._layer.backward(tape, None, state)
        params = {name[:-3]: g for name, g in grads.params.items()}
        return grads.input[0], grads.hx, params


def _lead1(a):
    """``a[None]``, also for device arrays (which have no ``None`` indexing)."""
    if isinstance(a, np.ndarray):
        return a[None]
    from .cuda.linalg import reshaped

    return reshaped(a, (1,) + tuple(a.shape))


class RNNCell(_CellBase):
    """Elman RNN cell, torch.nn.RNNCell's arguments: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``."""

    mode = "RNN"
    _layer_class = RNN

    def __init__(
        self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype="float32", seed=None
    ):
        super().__init__(input_size, hidden_size, bias, nonlinearity, dtype, seed)

    def backward(self, tape, grad_h):
        """Gradients of one step: ``(grad_x, grad_h_prev, grad_params)``; ``grad_h`` may be None."""
        gx, gh, params = self._backward(tape, [("grad_h", grad_h)])
        return gx, gh[0], params


class GRUCell(RNNCell):
    """GRU cell, torch.nn.GRUCell's arguments; ``h = cell(x, h)``."""

    mode = "GRU"
    _layer_class = GRU

    def __init__(self, input_size, hidden_size, bias=True, dtype="float32", seed=None):
        _CellBase.__init__(self, input_size, hidden_size, bias, "tanh", dtype, seed)


class LSTMCell(_CellBase):
    """LSTM cell, torch.nn.LSTMCell's arguments; ``h, c = cell(x, (h, c))``."""

    mode = "LSTM"
    _layer_class = LSTM

    def __init__(self, input_size, hidden_size, bias=True, dtype="float32", seed=None):
        super().__init__(input_size, hidden_size, bias, "tanh", dtype, seed)

    def backward(self, tape, grad_h, grad_c=None):
        """Gradients of one step: ``(grad_x, (grad_h_prev, grad_c_prev), grad_params)``.

        ``grad_h``/``grad_c`` are the gradients w.r.t. the returned ``h``/``c``;
        None means zeros.
        """
        gx, (gh, gc), params = self._backward(tape, [("grad_h", grad_h), ("grad_c", grad_c)])
        return gx, (gh[0], gc[0]), params
