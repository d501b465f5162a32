"""Single-step cells: ``RNNCell``, ``LSTMCell``, ``GRUCell`` (torch.nn's ``*Cell``).

A cell owns ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` and runs the
same fused kernels as the layers, with one time step.
"""

import numpy as np

from . import _validation as check
from . import gru, lstm, rnn
from ._params import ParameterMixin
from .layers import _empty_tapes
from .linalg import matmul_nt

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]


class _CellBase(ParameterMixin):
    mode = None
    _kern = None

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh",
                 dtype="float32", seed=None):
        self.input_size = check.positive_int("input_size", input_size)
        self.hidden_size = check.positive_int("hidden_size", hidden_size)
        if nonlinearity not in rnn.MODES:
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu'; got {nonlinearity!r}")
        self.bias = bool(bias)
        self.nonlinearity = nonlinearity
        self.dtype = check.as_dtype(dtype)
        self._mode_code = rnn.MODES[nonlinearity]
        self._params = self._init_params(seed)

    def _param_shapes(self):
        GH = self._kern.GATES * self.hidden_size
        shapes = {"weight_ih": (GH, self.input_size), "weight_hh": (GH, self.hidden_size)}
        if self.bias:
            shapes.update(bias_ih=(GH,), bias_hh=(GH,))
        return shapes

    def config(self):
        cfg = dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                   dtype=self.dtype.name)
        if self.mode == "RNN":
            cfg["nonlinearity"] = self.nonlinearity
        return cfg

    def __repr__(self):
        cfg = self.config()
        extra = "" if cfg["bias"] else ", bias=False"
        if cfg.get("nonlinearity", "tanh") != "tanh":
            extra += ", nonlinearity='relu'"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"

    def _biases(self):
        if self.bias:
            return self._params["bias_ih"], self._params["bias_hh"]
        zero = np.zeros(self._kern.GATES * self.hidden_size, self.dtype)
        return zero, zero

    def _check(self, x, hx):
        """Validate ``x`` and ``hx``; return ``(x (B, I), h (B, H), c (B, H) or None, unbatched)``."""
        x = check.array("input", x, self.dtype, f"(batch, {self.input_size})")
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"input must have shape (batch, {self.input_size}) or "
                             f"({self.input_size},); got {x.shape}")
        unbatched = x.ndim == 1
        x2 = np.ascontiguousarray(x.reshape(-1, self.input_size))
        B = x2.shape[0]
        shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        names = ("h", "c") if self.mode == "LSTM" else ("hx",)
        if hx is None:
            states = [np.zeros((B, self.hidden_size), self.dtype) for _ in names]
        else:
            if self.mode == "LSTM":
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"hx for LSTMCell must be a tuple (h, c); got "
                                    f"{type(hx).__name__}")
                parts = hx
            else:
                parts = (hx,)
            states = []
            for name, value in zip(names, parts):
                value = check.array(name, value, self.dtype, str(shape))
                check.shape(name, value, shape)
                states.append(np.array(value.reshape(B, self.hidden_size), order="C"))
        h = states[0]
        c = states[1] if self.mode == "LSTM" else h[:, :0]
        return x2, h, c, unbatched

    def _run(self, x, h, c):
        """One fused step; ``h``/``c`` are updated in place."""
        B = x.shape[0]
        H, GH = self.hidden_size, self._kern.GATES * self.hidden_size
        gx = np.empty((1, B, GH), self.dtype)
        matmul_nt(x, self._params["weight_ih"], gx[0])
        b_ih, b_hh = self._biases()
        self._kern.sequence(gx, self._params["weight_hh"], b_ih, b_hh,
                            np.empty((0, H), self.dtype), h, c, h[None],
                            np.ones(B, np.int64), False, self._mode_code,
                            np.empty((B, GH), self.dtype), np.empty((B, H), self.dtype),
                            np.empty((B, H), self.dtype), *_empty_tapes(self.dtype))

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
        x, h, c, unbatched = self._check(x, hx)
        self._run(x, h, c)
        if unbatched:
            h, c = h[0], c[0]
        return (h, c) if self.mode == "LSTM" else h

    forward = __call__


class RNNCell(_CellBase):
    """Elman RNN cell, torch.nn.RNNCell's arguments: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``."""

    mode = "RNN"
    _kern = rnn

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh",
                 dtype="float32", seed=None):
        super().__init__(input_size, hidden_size, bias, nonlinearity, dtype, seed)


class LSTMCell(_CellBase):
    """LSTM cell, torch.nn.LSTMCell's arguments; ``h, c = cell(x, (h, c))``."""

    mode = "LSTM"
    _kern = lstm

    def __init__(self, input_size, hidden_size, bias=True, dtype="float32", seed=None):
        super().__init__(input_size, hidden_size, bias, "tanh", dtype, seed)


class GRUCell(_CellBase):
    """GRU cell, torch.nn.GRUCell's arguments; ``h = cell(x, h)``."""

    mode = "GRU"
    _kern = gru

    def __init__(self, input_size, hidden_size, bias=True, dtype="float32", seed=None):
        super().__init__(input_size, hidden_size, bias, "tanh", dtype, seed)
