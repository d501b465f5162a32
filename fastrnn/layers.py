"""Multi-layer recurrent models: ``RNN``, ``LSTM``, ``GRU``.

A model holds torch-named parameters, validates input once, allocates the
workspaces, and calls the kernels of ``lstm.py``/``gru.py``/``rnn.py``:

* the input projection of every time step is one matrix product per layer
  and direction (NumPy's BLAS);
* only the recurrence is sequential. For small batches it runs entirely
  inside one Numba kernel; from ``BLAS_MIN_BATCH`` rows up the per-step
  recurrent product is large enough that BLAS wins, so a Python loop calls
  ``np.dot`` and the fused Numba cell step.
"""

import copy
import math

import numpy as np

from . import _validation as check
from . import gru, lstm, recurrence, rnn
from ._params import ParameterMixin
from .cuda import is_device_array
from .linalg import gemm
from .streaming import Streams
from .training import Gradients, Tape, backward_recurrence

__all__ = ["RNN", "LSTM", "GRU", "BLAS_MIN_BATCH"]

#: Batch size from which the per-step recurrent product goes through BLAS.
BLAS_MIN_BATCH = 16

_KERNELS = {"LSTM": lstm, "GRU": gru, "RNN": rnn}


def _empty_tapes(dtype):
    """Tapes meaning 'inference': nothing is recorded."""
    return np.empty((1, 0, 0), dtype), np.empty((0, 0, 0), dtype), np.empty((0, 0, 0), dtype)


def _no_int8(dtype):
    """Placeholders for the int8 weights and scales of a model that is not quantized."""
    return np.empty((0, 0), np.int8), np.empty(0, dtype)


def run_recurrence(
    kern, gx, w_hh, b_ih, b_hh, w_hr, h, c, y, lengths, reverse, mode, tapes=None, int8=None
):
    """Drive one layer-direction's recurrence with the best product for the batch size.

    ``h`` and ``c`` are updated in place to the final state; ``y`` (T, B, P) is
    filled. ``tapes`` is ``(gates, h_prev, c_prev)`` for training, else None.
    ``int8`` is ``(transposed int8 weights, row scales)`` of a quantized model's
    ``w_hh``, used by the small-batch kernel.
    """
    T, B, GH = gx.shape
    H = b_ih.shape[0] // kern.GATES
    P = h.shape[1]
    dtype = gx.dtype
    gh = np.empty((B, GH), dtype)
    m = np.empty((B, H), dtype)
    hp = np.empty((B, max(P, H)), dtype)
    tape_gates, tape_h, tape_c = tapes if tapes is not None else _empty_tapes(dtype)
    if B < BLAS_MIN_BATCH:
        # Transposed once per call (from the current weights): the per-step product then
        # streams weight rows without horizontal sums.
        w_t, s_hh = int8 if int8 is not None else (np.ascontiguousarray(w_hh.T), np.empty(0, dtype))
        recurrence.LOOPS[kern].sequence(
            gx,
            w_t,
            s_hh,
            b_ih,
            b_hh,
            w_hr,
            h,
            c,
            y,
            lengths,
            reverse,
            mode,
            gh,
            m,
            hp,
            tape_gates,
            tape_h,
            tape_c,
        )
        return
    w_hh_t = w_hh.T
    train = tapes is not None
    for s in range(T):
        t = T - 1 - s if reverse else s
        if train:
            tape_h[t] = h
            if tape_c.shape[0]:
                tape_c[t] = c
        gemm(h, w_hh_t, out=gh)
        kern.cell_step(
            gx[t],
            gh,
            b_ih,
            b_hh,
            w_hr,
            h,
            c,
            y[t],
            t,
            lengths,
            mode,
            m,
            hp,
            tape_gates[t if train else 0],
        )


class _RNNBase(ParameterMixin):
    """Shared machinery of RNN, LSTM and GRU; see those classes for the API."""

    mode = None
    _int8 = {}  # quantized copies: weight name -> (transposed int8 weights, row scales)
    _device_params = None  # resident GPU copies of the parameters (``to_device``)

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
        check.parameter_memory(self, self._param_count())
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
        dropout = check.probability("dropout", dropout)
        check.choice("nonlinearity", nonlinearity, tuple(rnn.MODES))
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.nonlinearity = nonlinearity
        self.dtype = check.as_dtype(dtype)
        self._kern = _KERNELS[self.mode]
        self._mode_code = rnn.MODES[nonlinearity]

    @classmethod
    def param_shapes_for(cls, **config):
        """torch's parameter names and shapes of ``cls(**config)``, without building it.

        ``config`` is validated as the constructor would (``fastrnn.load`` checks a file's
        tensors against it before allocating anything).
        """
        return cls._shell(**config)._param_shapes()

    @classmethod
    def _shell(cls, **config):
        """A validated model of this configuration that owns no parameter memory:
        ``_bind`` gives it arrays to compute with."""
        import inspect

        try:
            bound = inspect.signature(cls.__init__).bind(None, **config)
        except TypeError as exc:
            raise TypeError(f"{cls.__name__} configuration: {exc}") from None
        bound.apply_defaults()
        args = {k: v for k, v in bound.arguments.items() if k != "self"}
        args.pop("seed", None)
        shell = cls.__new__(cls)
        shell._configure(**args)
        check.parameter_memory(shell, shell._param_count())
        # names, shapes and dtype of the parameters, in torch's order, in no memory:
        # read-only zero-stride views of a single zero
        zero = np.zeros((), shell.dtype)
        shell._params = {
            name: np.broadcast_to(zero, shape) for name, shape in shell._param_shapes().items()
        }
        shell._streams = Streams()
        return shell

    # ----------------------------------------------------------------- parameters
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def output_size(self):
        """Feature size of ``h``: ``proj_size`` if set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def _param_count(self):
        """Number of parameters, computed without listing them (cheap for any size)."""
        G, H, P, D = self._kern.GATES, self.hidden_size, self.output_size, self.num_directions
        rest = G * H * P + (2 * G * H if self.bias else 0) + (P * H if self.proj_size else 0)
        first = G * H * self.input_size + rest
        later = G * H * D * P + rest
        return D * (first + (self.num_layers - 1) * later)

    def _param_shapes(self):
        """torch's parameter names and shapes, in torch's order."""
        G, H, P = self._kern.GATES, self.hidden_size, self.output_size
        shapes = {}
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else self.num_directions * P
            for d in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                shapes[f"weight_ih{sfx}"] = (G * H, in_size)
                shapes[f"weight_hh{sfx}"] = (G * H, P)
                if self.bias:
                    shapes[f"bias_ih{sfx}"] = (G * H,)
                    shapes[f"bias_hh{sfx}"] = (G * H,)
                if self.proj_size:
                    shapes[f"weight_hr{sfx}"] = (P, H)
        return shapes

    def _cell_params(self, layer, direction):
        """``(w_ih, w_hh, b_ih, b_hh, w_hr)`` of one layer-direction, zeros for absent ones."""
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        p = self._params
        if self.bias:
            b_ih, b_hh = p[f"bias_ih{sfx}"], p[f"bias_hh{sfx}"]
        else:
            b_ih = b_hh = self._zero_bias
        w_hr = p[f"weight_hr{sfx}"] if self.proj_size else self._no_proj
        return p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], b_ih, b_hh, w_hr

    def _int8_params(self, layer):
        """``(q_ih, s_ih, q_hh, s_hh)`` of a quantized model's layer (forward direction),
        empty placeholders otherwise."""
        if not self._int8:
            q, s = _no_int8(self.dtype)
            return q, s, q, s
        return self._int8[f"weight_ih_l{layer}"] + self._int8[f"weight_hh_l{layer}"]

    def quantize(self, weights="int8"):
        """An inference copy whose input and recurrent weights are int8 with one scale per row.

        The streaming ``step`` and the small-batch sequence kernel read the int8
        weights (stored transposed) and widen them to float32 in registers: a
        quarter of float32's bytes per step, which is what bounds batch-1
        inference. Row ``n`` of each weight matrix is divided by
        ``max|row| / 127`` and rounded. The copy's ``state_dict`` holds the
        dequantized weights, so its float paths (input projections, large
        batches) compute with the same numbers. Max abs error against the float32
        model, measured by ``tests/test_quantize.py``: about 1e-2 on outputs of
        torch-initialised layers (stated in ``docs/performance.md``).

        Parameters
        ----------
        weights : {"int8"}

        Returns
        -------
        model : same class, inference only (``forward_train`` and
            ``load_state_dict`` raise, and its arrays are read-only: edit the float32
            model and quantize it again).
        """
        if weights != "int8":
            raise ValueError(f"weights must be 'int8'; got {weights!r}")
        if self.dtype != np.float32:
            raise TypeError(f"quantize needs a float32 model; this one is {self.dtype}")
        q = copy.copy(self)
        q._params = {name: p.copy() for name, p in self._params.items()}
        q._streams = Streams()
        q._int8 = {}
        q._device_params = None
        for name, p in q._params.items():
            if name.startswith(("weight_ih", "weight_hh")):
                scale = np.abs(p).max(axis=1) / 127.0
                scale[scale == 0] = 1.0
                w8 = np.clip(np.rint(p / scale[:, None]), -127, 127).astype(np.int8)
                scale = scale.astype(np.float32)
                q._int8[name] = (np.ascontiguousarray(w8.T), scale)
                p[...] = w8 * scale[:, None]
        q._freeze()
        return q

    def _freeze(self):
        """Make a quantized model's arrays read-only: an in-place edit of its weights
        would leave the int8 copy stale, so it raises instead."""
        for p in self._params.values():
            p.flags.writeable = False
        for w8, scale in self._int8.values():
            w8.flags.writeable = False
            scale.flags.writeable = False

    @property
    def _zero_bias(self):
        return np.zeros(self._kern.GATES * self.hidden_size, self.dtype)

    @property
    def _no_proj(self):
        return np.empty((0, self.hidden_size), self.dtype)

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

    @property
    def weights_format(self):
        """How the input and recurrent weights are stored: the dtype's name, or ``"int8"``
        for a :meth:`quantize` copy."""
        return "int8" if self._int8 else self.dtype.name

    def __repr__(self):
        defaults = dict(
            num_layers=1,
            bias=True,
            batch_first=False,
            dropout=0.0,
            bidirectional=False,
            proj_size=0,
            nonlinearity="tanh",
        )
        cfg = self.config()
        args = [str(cfg.pop("input_size")), str(cfg.pop("hidden_size"))]
        args += [f"{k}={v!r}" for k, v in cfg.items() if defaults.get(k, object()) != v]
        if self._int8:
            args.append("weights=int8")
        return f"{type(self).__name__}({', '.join(args)})"

    def quantized_state_dict(self):
        """The stored weights of a quantized model, for ``fastrnn.save``.

        Returns
        -------
        dict of str to ndarray
            For each quantized weight ``name``: ``name`` as int8 (torch's shape) and
            ``name + ".scale"`` (float32, one scale per row); every other parameter
            as in :meth:`state_dict`.
        """
        if not self._int8:
            raise TypeError("quantized_state_dict: this model is not quantized")
        out = {}
        for name, p in self._params.items():
            if name in self._int8:
                w8_t, scale = self._int8[name]
                out[name] = np.ascontiguousarray(w8_t.T)
                out[name + ".scale"] = scale
            else:
                out[name] = p
        return out

    def load_quantized_state_dict(self, tensors):
        """Make this float32 model the quantized model whose :meth:`quantized_state_dict`
        is ``tensors`` (bit-identical outputs); returns the model.

        Raises
        ------
        ValueError
            If a tensor is missing, unexpected, or of the wrong dtype or shape.
        """
        expected = self._param_shapes()
        quantized = [n for n in expected if n.startswith(("weight_ih", "weight_hh"))]
        want = set(expected) | {n + ".scale" for n in quantized}
        if set(tensors) != want:
            raise ValueError(
                f"quantized weights do not match {self!r}: missing "
                f"{sorted(want - set(tensors))}, unexpected {sorted(set(tensors) - want)}"
            )
        float_part = {}
        for name, shape in expected.items():
            value = np.asarray(tensors[name])
            if name in quantized:
                scale = np.asarray(tensors[name + ".scale"])
                if value.dtype != np.int8 or value.shape != shape:
                    raise ValueError(
                        f"{name} must be int8 of shape {shape}; got {value.dtype} {value.shape}"
                    )
                if (
                    scale.dtype != np.float32
                    or scale.shape != (shape[0],)
                    or not np.all(np.isfinite(scale))
                ):
                    raise ValueError(f"{name}.scale must be {shape[0]} finite float32 values")
                value = value * scale[:, None]
            float_part[name] = value
        self.load_state_dict(float_part)
        self._int8 = {
            name: (
                np.ascontiguousarray(np.asarray(tensors[name]).T),
                np.asarray(tensors[name + ".scale"]).copy(),
            )
            for name in quantized
        }
        self._streams = Streams()
        self._freeze()
        return self

    # ------------------------------------------------------------------ states
    def _state_shapes(self, batch):
        lead = (self.num_layers * self.num_directions,)
        b = () if batch is None else (batch,)
        return lead + b + (self.output_size,), lead + b + (self.hidden_size,)

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
        h_shape, c_shape = self._state_shapes(batch_size)
        count = math.prod(h_shape) + (math.prod(c_shape) if self.mode == "LSTM" else 0)
        check.fits_in_memory(
            f"initial_state(batch_size={batch_size}) would need {count:,} values", count, self.dtype
        )
        h = np.zeros(h_shape, self.dtype)
        return (h, np.zeros(c_shape, self.dtype)) if self.mode == "LSTM" else h

    def _check_state(self, hx, batch, unbatched, names=("h0", "c0", "hx")):
        """Validate ``hx`` and return contiguous copies ``(h, c)`` with a batch axis.

        ``names`` are the argument names used in messages: LSTM's two parts and
        the single array of GRU/RNN.
        """
        h_shape, c_shape = self._state_shapes(None if unbatched else batch)
        if hx is None:
            h_shape, c_shape = self._state_shapes(batch)
            return np.zeros(h_shape, self.dtype), np.zeros(c_shape, self.dtype)
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(
                    f"{names[0].split('[')[0]} for LSTM must be a tuple (h, c); "
                    f"got {type(hx).__name__}"
                )
            h0, c0 = hx
            h_name = names[0]
        else:
            if isinstance(hx, (tuple, list)):
                raise TypeError(
                    f"{names[2]} for {self.mode} must be a single array; got a {type(hx).__name__}"
                )
            h0, c0 = hx, None
            h_name = names[2]
        h0 = check.array(h_name, h0, self.dtype, h_shape)
        check.shape(h_name, h0, h_shape)
        if c0 is not None:
            c0 = check.array(names[1], c0, self.dtype, c_shape)
            check.shape(names[1], c0, c_shape)
        if unbatched:
            h0 = h0[:, None]
            c0 = None if c0 is None else c0[:, None]
        h = np.array(h0, order="C", copy=True)
        c = (
            np.zeros(h.shape[:2] + (self.hidden_size,), self.dtype)
            if c0 is None
            else np.array(c0, order="C", copy=True)
        )
        return h, c

    def _pack_state(self, h, c, unbatched):
        if unbatched:
            h, c = h[:, 0], c[:, 0]
        return (h, c) if self.mode == "LSTM" else h

    # ------------------------------------------------------------------ forward
    def _check_input(self, x):
        """Validate ``x``; return ``(x as (T, B, I) contiguous, unbatched)``."""
        shape_text = (
            "(batch, seq_len, {0})" if self.batch_first else "(seq_len, batch, {0})"
        ).format(self.input_size)
        x = check.array("input", x, self.dtype, shape_text)
        if x.ndim not in (2, 3):
            raise ValueError(
                f"input must have shape {shape_text} or (seq_len, {self.input_size}) "
                f"unbatched; got {x.ndim}-D shape {x.shape}"
            )
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        if x.shape[2] != self.input_size:
            raise ValueError(
                f"input must have shape {shape_text}; got {x.shape[-1]} features "
                f"(input_size={self.input_size})"
            )
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"input must have seq_len >= 1 and batch >= 1; got shape {x.shape}")
        return np.ascontiguousarray(x), unbatched

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
        if type(x) is not np.ndarray and is_device_array(x):
            return self._cuda_layers().forward(self, x, hx, lengths)
        x, unbatched = self._check_input(x)
        T, B, _ = x.shape
        h, c = self._check_state(hx, B, unbatched)
        lens = np.full(B, T, np.int64) if lengths is None else check.lengths(lengths, B, T)
        y = self._forward(x, h, c, lens)
        return self._pack_output(y, unbatched), self._pack_state(h, c, unbatched)

    forward = __call__

    def _pack_output(self, y, unbatched):
        if unbatched:
            return y[:, 0]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y

    def _forward(self, x, h, c, lens, tape=None, masks=()):
        """All layers over contiguous ``x`` (T, B, I); ``h``/``c`` become the final state.

        ``masks`` are scaled inter-layer dropout masks (T, B, features), taken
        from the tape when there is one. With a :class:`~fastrnn.training.Tape`,
        records what ``backward`` needs.
        """
        if tape is not None:
            masks = tape.masks
        self._check_param_shapes()
        T, B, _ = x.shape
        D, P, H = self.num_directions, self.output_size, self.hidden_size
        layer_input = x
        for layer in range(self.num_layers):
            if tape is not None:
                tape.layer_inputs.append(layer_input)
            outs = []
            for d in range(D):
                w_ih, w_hh, b_ih, b_hh, w_hr = self._cell_params(layer, d)
                gx = gemm(layer_input.reshape(T * B, -1), w_ih.T).reshape(T, B, -1)
                y = np.empty((T, B, P), self.dtype)
                k = layer * D + d
                steps = None
                if tape is not None:
                    steps = (
                        np.empty((T, B, self._kern.TAPE_GATES * H), self.dtype),
                        np.empty((T, B, P), self.dtype),
                        np.empty((T if self.mode == "LSTM" else 0, B, H), self.dtype),
                    )
                    tape.steps.append(steps)
                run_recurrence(
                    self._kern,
                    gx,
                    w_hh,
                    b_ih,
                    b_hh,
                    w_hr,
                    h[k],
                    c[k],
                    y,
                    lens,
                    bool(d),
                    self._mode_code,
                    steps,
                    self._int8.get(f"weight_hh_l{layer}" + ("_reverse" if d else "")),
                )
                outs.append(y)
            layer_input = outs[0] if D == 1 else np.concatenate(outs, axis=2)
            if layer < len(masks):
                layer_input = layer_input * masks[layer]
        return layer_input

    # ------------------------------------------------------------------ training
    def _signature(self):
        return tuple(self._param_shapes().items())

    def _dropout_masks(self, masks, rng, T, B, unbatched):
        """Scaled inter-layer dropout masks in (T, B, features) layout, or []."""
        if self.dropout == 0 or self.num_layers == 1:
            if masks is not None and len(masks):
                raise ValueError(
                    "dropout_masks given, but the model applies no inter-layer "
                    f"dropout (dropout={self.dropout}, num_layers={self.num_layers})"
                )
            return []
        F = self.num_directions * self.output_size
        n = self.num_layers - 1
        scale = 0.0 if self.dropout == 1 else 1.0 / (1.0 - self.dropout)
        if masks is None:
            rng = check.generator("rng", rng)
            return [
                (rng.random((T, B, F)) >= self.dropout).astype(self.dtype) * scale for _ in range(n)
            ]
        if len(masks) != n:
            raise ValueError(
                f"dropout_masks must hold num_layers - 1 = {n} arrays; got {len(masks)}"
            )
        if unbatched:
            expected = (T, F)
        else:
            expected = (B, T, F) if self.batch_first else (T, B, F)
        out = []
        for i, mask in enumerate(masks):
            mask = check.to_numpy(mask)
            if mask.shape != expected:
                raise ValueError(
                    f"dropout_masks[{i}] must have shape {expected} (like the "
                    f"layer output); got {mask.shape}"
                )
            mask = (
                mask.reshape(T, 1, F)
                if unbatched
                else (mask.transpose(1, 0, 2) if self.batch_first else mask)
            )
            out.append(np.ascontiguousarray((mask != 0).astype(self.dtype) * scale))
        return out

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
        if type(x) is not np.ndarray and is_device_array(x):
            return self._cuda_layers().forward_train(self, x, hx, lengths, dropout_masks, rng)
        given = x
        x, unbatched = self._check_input(x)
        if isinstance(given, np.ndarray) and np.may_share_memory(x, given):
            x = x.copy()  # the tape owns its input: later edits of the caller's x change nothing
        T, B, _ = x.shape
        h, c = self._check_state(hx, B, unbatched)
        lens = np.full(B, T, np.int64) if lengths is None else check.lengths(lengths, B, T).copy()
        tape = Tape(id(self), self._signature(), None, unbatched, lens)
        tape.weights_version = self.weights_version
        tape.masks = self._dropout_masks(dropout_masks, rng, T, B, unbatched)
        y = self._forward(x, h, c, lens, tape)
        y = self._pack_output(y, unbatched)
        tape.y_shape = y.shape
        return y, self._pack_state(h, c, unbatched), tape

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
        if tape.model_id != id(self) or tape.signature != self._signature():
            raise ValueError(
                "tape was recorded by another model (or before this model's "
                "parameters changed shape); run forward_train on this model again"
            )
        if tape.weights_version != self.weights_version:
            raise ValueError(
                "tape was recorded before load_state_dict changed this model's weights: its "
                "gradients would mix old and new weights; run forward_train again"
            )
        if tape.device is not None:
            return self._cuda_layers().backward(self, tape, grad_y, grad_state)
        unbatched = tape.unbatched
        T, B = tape.layer_inputs[0].shape[:2]
        D, P = self.num_directions, self.output_size
        if grad_y is None:
            dy_all = np.zeros((T, B, D * P), self.dtype)
        else:
            grad_y = check.array("grad_y", grad_y, self.dtype, str(tape.y_shape))
            check.shape("grad_y", grad_y, tape.y_shape)
            if unbatched:
                dy_all = grad_y[:, None]
            else:
                dy_all = grad_y.transpose(1, 0, 2) if self.batch_first else grad_y
        names = ("grad_state[0] (h_n)", "grad_state[1] (c_n)", "grad_state")
        dh_all, dc_all = self._check_state(grad_state, B, unbatched, names)
        grad_x, params = self._backward(tape, dy_all, dh_all, dc_all)
        if unbatched:
            grad_x = grad_x[:, 0]
        elif self.batch_first:
            grad_x = np.ascontiguousarray(grad_x.transpose(1, 0, 2))
        return Gradients(grad_x, self._pack_state(dh_all, dc_all, unbatched), params)

    def _check_param_shapes(self):
        """The kernels index with the configured sizes: refuse parameters whose shape
        changed under the model (``state_dict()[k].shape = ...``) before any kernel runs."""
        expected = self.__dict__.get("_expected_shapes")
        if expected is None:
            expected = self.__dict__["_expected_shapes"] = self._param_shapes()
        for name, shape in expected.items():
            got = self._params[name].shape
            if got != shape:
                raise ValueError(
                    f"parameter {name!r} has shape {got}, but this model's configuration needs "
                    f"{shape}; restore it or load_state_dict() a matching one"
                )

    def _backward(self, tape, dy_all, dh_all, dc_all, input_grad=True, param_grads=True):
        """BPTT in the internal layout.

        ``dy_all`` (T, B, D*P) is the output gradient; ``dh_all``/``dc_all``
        (contiguous, modified in place) enter as final-state gradients and
        leave as initial-state gradients. Returns ``(grad_x or None, params or
        None)``; the flags skip the products nobody asked for: ``param_grads`` is
        True (all), False (none) or a collection of parameter names, the others
        then being returned as zeros without their products being computed.
        """
        self._check_param_shapes()
        T, B = tape.layer_inputs[0].shape[:2]
        D, P = self.num_directions, self.output_size
        wanted = set(self._params) if param_grads is True else set(param_grads or ())
        # Every wanted gradient is written whole by the products below (``out=``).
        params = (
            {
                name: np.empty_like(p) if name in wanted else np.zeros_like(p)
                for name, p in self._params.items()
            }
            if wanted
            else None
        )

        def product(name, a, b):
            if name in wanted:
                gemm(a, b, out=params[name])

        def column_sum(name, a):
            if name in wanted:
                np.sum(a, axis=0, out=params[name])

        lens = tape.lengths
        for layer in reversed(range(self.num_layers)):
            X = tape.layer_inputs[layer].reshape(T * B, -1)
            need_dx = layer > 0 or input_grad
            d_input = np.zeros((T * B, X.shape[1]), self.dtype) if need_dx else None
            for d in range(D):
                k = layer * D + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh, _, _, w_hr = self._cell_params(layer, d)
                gates, h_prev, c_prev = tape.steps[k]
                dy = np.ascontiguousarray(dy_all[:, :, d * P : (d + 1) * P])
                dgx, dgh, dhp, mt = backward_recurrence(
                    self._kern,
                    gates,
                    h_prev,
                    c_prev,
                    w_hh,
                    w_hr,
                    lens,
                    bool(d),
                    self._mode_code,
                    dy,
                    dh_all[k],
                    dc_all[k],
                    BLAS_MIN_BATCH,
                )
                dgx2 = dgx.reshape(T * B, -1)
                dgh2 = dgh.reshape(T * B, -1)
                product(f"weight_ih{sfx}", dgx2.T, X)
                product(f"weight_hh{sfx}", dgh2.T, h_prev.reshape(T * B, -1))
                column_sum(f"bias_ih{sfx}", dgx2)
                column_sum(f"bias_hh{sfx}", dgh2)
                product(f"weight_hr{sfx}", dhp.reshape(T * B, -1).T, mt.reshape(T * B, -1))
                if need_dx:
                    d_input += gemm(dgx2, w_ih)
            if not need_dx:
                return None, params
            d_input = d_input.reshape(T, B, -1)
            if layer > 0 and layer - 1 < len(tape.masks):
                d_input *= tape.masks[layer - 1]
            dy_all = d_input
        return dy_all, params

    # ------------------------------------------------------------------ GPU
    @staticmethod
    def _cuda_layers():
        from .cuda import layers

        return layers

    def to_device(self):
        """Keep a copy of the parameters on the GPU; returns the model.

        Device inputs then use the resident copy instead of copying the weights
        at every call. The copy is taken now: ``load_state_dict`` refreshes it,
        in-place edits of the host arrays need another ``to_device()``.
        """
        from .cuda import require, to_device

        require(f"{type(self).__name__}.to_device()")
        self._device_params = {name: to_device(p) for name, p in self._params.items()}
        return self

    def device_state_dict(self):
        """The resident GPU parameters (after :meth:`to_device`), under torch's names.

        The model's own device arrays, like :meth:`state_dict`'s host arrays: an
        optimizer step written into them in place updates the model on the GPU (copy
        them back with ``load_state_dict({k: v.copy_to_host() ...})``).
        """
        if self._device_params is None:
            raise RuntimeError("device_state_dict: call to_device() first")
        return dict(self._device_params)

    def _bind(self, params):
        """A view of this model computing with ``params`` (arrays used as they are).

        Used by the PyTorch bridge to run on the memory of torch's parameters.
        """
        bound = copy.copy(self)
        bound._params = params
        bound._streams = Streams()
        bound._device_params = None
        return bound

    # ------------------------------------------------------------------ streaming
    def step(self, x_t, state=None):
        """Advance every layer by one time step (streaming inference).

        Parameters
        ----------
        x_t : ndarray, shape (batch, input_size), or (input_size,) unbatched
        state : ndarray or tuple of ndarray, optional
            As returned by :meth:`initial_state` or a previous ``step``; zeros if None.

        Returns
        -------
        y_t : ndarray, shape (batch, H_out)
        state : same structure as ``state``

        Notes
        -----
        The ``state`` passed in is never modified. Each stream (a sequence started
        from ``None`` or from a state you made, continued with the states ``step``
        returns) has its own buffers: after its first step nothing is allocated, any
        number of streams can be interleaved on one model, and each returned state
        stays valid until its stream has advanced two more steps (copy it to keep it
        longer). Calls on one model are serialised; see :mod:`fastrnn.streaming`.
        """
        if self.bidirectional:
            raise ValueError(
                "step() needs a unidirectional model: the reverse direction of a "
                "bidirectional model depends on future inputs"
            )
        if not (type(x_t) is np.ndarray and x_t.dtype == self.dtype):  # fast path first
            if is_device_array(x_t):
                raise TypeError(
                    "x_t is a device array; step() streams on the CPU. On the GPU, "
                    "call the model on a length-1 sequence with the state"
                )
            x_t = check.array("x_t", x_t, self.dtype, f"(batch, {self.input_size})")
        if x_t.ndim not in (1, 2) or x_t.shape[-1] != self.input_size:
            raise ValueError(
                f"x_t must have shape (batch, {self.input_size}) or "
                f"({self.input_size},); got {x_t.shape}"
            )
        unbatched = x_t.ndim == 1
        B = 1 if unbatched else x_t.shape[0]
        return self._streams.step(self, x_t, state, B, unbatched)

    def _state_in(self, state, B, unbatched):
        """Validate a streaming state without copying it."""
        if state is None:
            return None, None
        h_shape, c_shape = self._state_shapes(None if unbatched else B)
        if self.mode == "LSTM":
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(
                    f"state for LSTM must be a tuple (h, c); got {type(state).__name__}"
                )
            h_in, c_in = state
        else:
            h_in, c_in = state, None
        name = "state[0] (h)" if self.mode == "LSTM" else "state"
        h_in = check.array(name, h_in, self.dtype, h_shape)
        check.shape(name, h_in, h_shape)
        if c_in is not None:
            c_in = check.array("state[1] (c)", c_in, self.dtype, c_shape)
            check.shape("state[1] (c)", c_in, c_shape)
        return h_in, (h_in[..., :0] if c_in is None else c_in)


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
