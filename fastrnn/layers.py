"""Multi-layer recurrent models: ``RNN``, ``LSTM``, ``GRU``.

A model holds torch-named parameters and its :class:`~fastrnn.engine.Spec`, checks what
a user passes (:mod:`fastrnn._inputs`), and runs :mod:`fastrnn.engine` on NumPy arrays
or, for device inputs, on device arrays. Streaming ``step`` is in
:mod:`fastrnn.streaming`, quantized formats in :mod:`fastrnn.quantized`.
"""

import inspect
import math

import numpy as np

from . import _inputs, engine
from . import _validation as check
from ._params import ParameterMixin
from .cuda import is_device_array
from .quantized import QuantizedMixin
from .streaming import StreamingMixin, Streams
from .training import Gradients, Tape

__all__ = ["RNN", "LSTM", "GRU"]


#: Constructor arguments ``repr`` leaves out when they have these values.
_REPR_DEFAULTS = dict(
    num_layers=1,
    bias=True,
    batch_first=False,
    dropout=0.0,
    bidirectional=False,
    proj_size=0,
    nonlinearity="tanh",
)


def _device_inputs():
    from . import _device_inputs

    return _device_inputs


class _RNNBase(ParameterMixin, QuantizedMixin, StreamingMixin):
    """Shared machinery of RNN, LSTM and GRU; see those classes for the API."""

    mode = None

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        proj_size=0,
        nonlinearity="tanh",
        dtype="float32",
        seed=None,
    ):
        self._configure(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            nonlinearity,
            dtype,
        )
        check.parameter_memory(self, self.spec.param_count())
        self._params = self._init_params(seed)
        self._streams = Streams()

    def _configure(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        proj_size=0,
        nonlinearity="tanh",
        dtype="float32",
    ):
        """Validate the constructor arguments and set the configuration attributes."""
        self.input_size = check.positive_int("input_size", input_size)
        self.hidden_size = check.positive_int("hidden_size", hidden_size)
        self.num_layers = check.positive_int("num_layers", num_layers)
        self.proj_size = check.positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size and self.mode != "LSTM":
            raise ValueError(f"proj_size is only supported by LSTM; got proj_size={proj_size}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size={hidden_size}; got {proj_size}"
            )
        self.dropout = check.probability("dropout", dropout)
        self.nonlinearity = check.choice(
            "nonlinearity", nonlinearity, tuple(engine.spec.ACTIVATIONS)
        )
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = check.as_dtype(dtype)
        self.spec = engine.Spec(
            self.mode,
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.bidirectional,
            self.proj_size,
            self.nonlinearity,
            self.dropout,
            self.dtype,
        )

    @classmethod
    def param_shapes_for(cls, **config):
        """torch's parameter names and shapes of ``cls(**config)``, without building it.

        ``config`` is validated as the constructor would (``fastrnn.load`` checks a file's
        tensors against it before allocating anything).
        """
        try:
            bound = inspect.signature(cls.__init__).bind(None, **config)
        except TypeError as exc:
            raise TypeError(f"{cls.__name__} configuration: {exc}") from None
        bound.apply_defaults()
        args = {k: v for k, v in bound.arguments.items() if k not in ("self", "seed")}
        shell = cls.__new__(cls)
        shell._configure(**args)
        check.parameter_memory(shell, shell.spec.param_count())
        return shell.spec.param_shapes()

    # ----------------------------------------------------------------- parameters
    @property
    def num_directions(self):
        return self.spec.num_directions

    @property
    def output_size(self):
        """Feature size of ``h``: ``proj_size`` if set, else ``hidden_size``."""
        return self.spec.output_size

    def _param_shapes(self):
        return self.spec.param_shapes()

    def config(self):
        """Constructor arguments, enough to rebuild the model (used by ``fastrnn.save``)."""
        cfg = dict(
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
        )
        if self.mode == "LSTM":
            cfg["proj_size"] = self.proj_size
        if self.mode == "RNN":
            cfg["nonlinearity"] = self.nonlinearity
        cfg["dtype"] = self.dtype.name
        return cfg

    def __repr__(self):
        defaults = _REPR_DEFAULTS
        cfg = self.config()
        args = [str(cfg.pop("input_size")), str(cfg.pop("hidden_size"))]
        args += [f"{k}={v!r}" for k, v in cfg.items() if defaults.get(k, object()) != v]
        if self._int8:
            args.append(f"weights={self._int8.name}")
        return f"{type(self).__name__}({', '.join(args)})"

    # ------------------------------------------------------------------ states
    def initial_state(self, batch_size=None):
        """Zero state in torch's shapes; ``batch_size=None`` gives the unbatched shapes.

        Returns
        -------
        h0 : ndarray, shape (num_layers * num_directions, batch, H_out)
            For LSTM a tuple ``(h0, c0)``, ``c0`` of shape
            (num_layers * num_directions, batch, hidden_size).
        """
        if batch_size is not None:
            batch_size = check.positive_int("batch_size", batch_size, minimum=0)
        h_shape, c_shape = self.spec.state_shapes(batch_size)
        count = math.prod(h_shape) + (math.prod(c_shape) if self.mode == "LSTM" else 0)
        check.fits_in_memory(
            f"initial_state(batch_size={batch_size}) would need {count:,} values", count, self.dtype
        )
        h = np.zeros(h_shape, self.dtype)
        return (h, np.zeros(c_shape, self.dtype)) if self.mode == "LSTM" else h

    # ------------------------------------------------------------------ forward
    def __call__(self, x, hx=None, lengths=None):
        """Run the model over a sequence.

        Parameters
        ----------
        x : ndarray, shape (seq_len, batch, input_size)
            ``(batch, seq_len, input_size)`` with ``batch_first``;
            ``(seq_len, input_size)`` for one unbatched sequence.
        hx : ndarray or tuple of ndarray, optional
            Initial state, torch's shapes (see :meth:`initial_state`). Zeros if omitted.
        lengths : array_like of int, shape (batch,), optional
            Valid length of each sequence, any order. Outputs past a sequence's
            end are zero and its final state is the one after its last valid
            step; the reverse direction starts at each sequence's own end.

        Returns
        -------
        y : ndarray, shape (seq_len, batch, num_directions * H_out)
        h_n : ndarray, shape (num_layers * num_directions, batch, H_out)
            For LSTM ``(h_n, c_n)``.

        Notes
        -----
        A device ``x`` (anything with ``__cuda_array_interface__``) runs the CUDA
        kernels of :mod:`fastrnn.cuda` and gives Numba device arrays.
        """
        y, state, _ = self._run(x, hx, lengths, train=False)
        return y, state

    forward = __call__

    def forward_train(self, x, hx=None, lengths=None, dropout_masks=None, rng=None):
        """Forward pass that records a tape for :meth:`backward`.

        Parameters
        ----------
        x, hx, lengths
            As for calling the model.
        dropout_masks : sequence of ndarray, optional
            With ``dropout > 0`` and more than one layer: one keep-mask per
            inter-layer gap (``num_layers - 1`` of them), shaped like the
            layer output (``(seq_len, batch, num_directions * H_out)``, batch
            first with ``batch_first``), nonzero meaning keep. Kept values are
            scaled by ``1 / (1 - dropout)`` (inverted dropout, as torch.nn).
        rng : numpy.random.Generator, optional
            Draws the masks when ``dropout_masks`` is not given.

        Returns
        -------
        y, state
            As for calling the model.
        tape : Tape
        """
        if self._int8:
            raise TypeError(
                "forward_train: a quantized model is for inference only; train "
                "the float32 model and quantize() it afterwards"
            )
        return self._run(x, hx, lengths, True, dropout_masks, rng)

    def _run(self, x, hx, lengths, train, dropout_masks=None, rng=None):
        """Check, run the engine, and give results in the user's layout."""
        device = type(x) is not np.ndarray and is_device_array(x)
        io = _device_inputs() if device else _inputs
        given = x
        x, unbatched = io.sequence(self, x)
        if train and not device and isinstance(given, np.ndarray) and np.may_share_memory(x, given):
            x = x.copy()  # the tape owns its input: later edits of the caller's x change nothing
        T, B, _ = x.shape
        h, c = io.state(self, hx, B, unbatched)
        if device:
            lens = io.lengths(lengths, B, T)
            params = io.params(self)
        else:
            lens = np.full(B, T, np.int64) if lengths is None else check.lengths(lengths, B, T)
            lens = lens.copy() if train else lens
            self._check_param_shapes()
            params = self._params
        masks = []
        if train:
            keep = _inputs.dropout_masks(self, _host_masks(dropout_masks), rng, T, B, unbatched)
            masks = engine.scaled_masks(self.spec, keep)
            masks = io.masks(masks) if device else masks
        y, _, tape = engine.forward(
            self.spec, params, x, (h, c), lens, train=train, dropout_masks=masks, int8=self._int8
        )
        y = io.output(self, y, unbatched)
        if train:
            tape.model_id, tape.signature = id(self), self.spec
            tape.unbatched, tape.y_shape = unbatched, tuple(y.shape)
            tape.weights_version = self.weights_version
            return y, io.pack_state(self, h, c, unbatched), tape
        return y, io.pack_state(self, h, c, unbatched), None

    # ------------------------------------------------------------------ training
    def backward(self, tape, grad_y, grad_state=None):
        """Backpropagation through time from a tape of :meth:`forward_train`.

        Parameters
        ----------
        tape : Tape
        grad_y : ndarray or None
            Gradient w.r.t. ``y``, same shape; None means zeros.
        grad_state : ndarray or tuple of ndarray, optional
            Gradient w.r.t. the final state (``(h_n, c_n)`` for LSTM); None means zeros.

        Returns
        -------
        Gradients
            ``input`` (shape of ``x``), ``hx`` (structure of ``hx``) and ``params``
            (torch names to arrays of the parameters' shapes).
        """
        if not isinstance(tape, Tape):
            raise TypeError(
                f"tape must be the Tape returned by forward_train; got {type(tape).__name__}"
            )
        if tape.model_id != id(self) or tape.signature != self.spec:
            raise ValueError(
                "tape was recorded by another model (or before this model's "
                "parameters changed shape); run forward_train on this model again"
            )
        if tape.weights_version != self.weights_version:
            raise ValueError(
                "tape was recorded before load_state_dict changed this model's weights: its "
                "gradients would mix old and new weights; run forward_train again"
            )
        device = type(tape.layer_inputs[0]) is not np.ndarray
        io = _device_inputs() if device else _inputs
        B = tape.layer_inputs[0].shape[1]
        dy = io.grad_output(self, grad_y, tape)
        dh, dc = io.state(self, grad_state, B, tape.unbatched, _inputs.GRAD_STATE_NAMES)
        if device:
            params = io.params(self)
        else:
            self._check_param_shapes()
            params = self._params
        grads = engine.backward(self.spec, params, tape, dy, (dh, dc))
        grad_x = io.output(self, grads.input, tape.unbatched)
        return Gradients(grad_x, io.pack_state(self, dh, dc, tape.unbatched), grads.params)


def _host_masks(masks):
    """Device keep-masks come back to the host (they are drawn and checked there)."""
    if masks is None:
        return None
    return [m.copy_to_host() if hasattr(m, "copy_to_host") else m for m in masks]


class RNN(_RNNBase):
    """Elman RNN with tanh or ReLU, torch.nn.RNN's arguments and parameter layout.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    nonlinearity : {"tanh", "relu"}, default "tanh"
    bias : bool, default True
    batch_first : bool, default False
    dropout : float, default 0.0
        Dropout between layers; used only by training (``forward_train``).
    bidirectional : bool, default False
    dtype : {"float32", "float64"}, default "float32"
    seed : int or None
        Seed of the NumPy generator for torch-like uniform(±1/sqrt(hidden_size)) init.
    """

    mode = "RNN"

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        nonlinearity="tanh",
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        dtype="float32",
        seed=None,
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            nonlinearity,
            dtype,
            seed,
        )


class LSTM(_RNNBase):
    """Long short-term memory, torch.nn.LSTM's arguments and parameter layout.

    Parameters are those of :class:`RNN` without ``nonlinearity``, plus
    ``proj_size`` (int, default 0): project ``h`` to this size with ``weight_hr_l{k}``.
    Calls return ``y, (h_n, c_n)``.
    """

    mode = "LSTM"

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        proj_size=0,
        dtype="float32",
        seed=None,
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            "tanh",
            dtype,
            seed,
        )


class GRU(_RNNBase):
    """Gated recurrent unit, torch.nn.GRU's arguments and parameter layout.

    Parameters are those of :class:`RNN` without ``nonlinearity``.
    """

    mode = "GRU"

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        dtype="float32",
        seed=None,
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            "tanh",
            dtype,
            seed,
        )
