"""Drop-in replacements for torch.nn.RNN/LSTM/GRU and their cells.

The layers derive from ``torch.nn.RNNBase`` and the cells from their torch.nn
class, so constructor arguments, defaults, parameters, initialisation,
``state_dict`` and ``repr`` are torch's own; only ``forward`` changes, to call
fastrnn's kernels through the ``fastrnn::rnn`` operator: the NumPy kernels for CPU
tensors, ``fastrnn.cuda``'s for CUDA tensors (when numba-cuda is installed). Inputs
the kernels do not handle (other devices, or not float32/float64) fall back to
torch.nn's implementation.

Checkpoints stay portable: a module pickles (``torch.save(model)``, ``copy.copy``)
as its torch.nn class with the same state, so a checkpoint of a converted model
needs exactly the globals a torch.nn model needs, loads under ``torch.load``'s
default ``weights_only=True`` in a process that never imported fastrnn_torch, and
comes back as plain torch.nn modules (``convert`` them again to run on fastrnn).
``copy.deepcopy`` keeps the fastrnn class. ``torch.jit.trace`` and
``torch.export`` record torch.nn's operators, so their artifacts load wherever
torch.nn's do; ``torch.compile`` keeps fastrnn's kernels (the ``fastrnn::rnn`` op).

Why ``RNNBase`` and not ``torch.nn.LSTM`` itself: TorchDynamo refuses to trace
any instance of ``torch.nn.RNN/GRU/LSTM`` (unless a global experimental flag is
set), which would make ``torch.compile`` break the graph at every layer. So
``isinstance(frt.LSTM(...), torch.nn.LSTM)`` is False, while
``isinstance(..., torch.nn.RNNBase)`` is True; torch.nn.LSTM's own helper
methods are reused as they are.
"""

import copy
import copyreg
import json

import torch
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import _cells, _cuda
from ._ops import _under_transform, graph_capture, needs_grad, rnn

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _supported(x, weights):
    """Whether the kernels can run on these tensors (else torch.nn runs): the CPU
    kernels, or the CUDA ones for CUDA tensors where ``fastrnn.cuda`` is available."""
    dtype = x.dtype
    if dtype not in _DTYPES or x.is_sparse:
        return False
    if x.is_cpu:  # the common case, checked without building device objects
        return all(w.is_cpu and w.dtype == dtype for w in weights)
    if not (x.device.type == "cuda" and _cuda.available()):
        return False
    return all(w.device == x.device and w.dtype == dtype for w in weights)


def _check_state_dtype(h, x):
    """torch.nn's error for an initial state whose dtype differs from the input's
    (integer, bool or another float type would give wrong results or fail in a kernel)."""
    if h.dtype != x.dtype:
        raise RuntimeError(
            f"hx must have the input's dtype {x.dtype}; got {h.dtype} (torch.nn: mat1 and mat2 "
            "must have the same dtype)"
        )


_STRIDED = torch.strided


def _plain_state(h, dtype, B, H):
    """Whether a state tensor takes the cells' common path: (B, H), contiguous, CPU."""
    return (
        type(h) is torch.Tensor
        and h.dtype == dtype
        and h.is_cpu
        and h.layout is _STRIDED
        and h.dim() == 2
        and h.shape == (B, H)
        and h.is_contiguous()
    )


@torch.compiler.assume_constant_result
def _config(module, mode, num_layers, dtype):
    """JSON configuration of the core model, cached on the module per dtype.

    A constant for ``torch.compile``: it depends on the module's settings only.
    """
    settings = module.__dict__  # not getattr(module, ..., default): a missing name would
    # go through Module.__getattr__ and an exception, microseconds per cell step
    key = (
        dtype,
        module.hidden_size,
        module.input_size,
        num_layers,
        module.bias,
        settings.get("dropout", 0.0),
        settings.get("bidirectional", False),
        settings.get("proj_size", 0),
        settings.get("nonlinearity", "tanh"),
    )
    cache = module.__dict__.setdefault("_fastrnn_config", {})
    if key not in cache:
        cfg = dict(
            mode=mode,
            input_size=module.input_size,
            hidden_size=module.hidden_size,
            num_layers=num_layers,
            bias=module.bias,
            dropout=float(getattr(module, "dropout", 0.0)),
            bidirectional=bool(getattr(module, "bidirectional", False)),
            dtype=_DTYPES[dtype],
        )
        if mode == "LSTM":
            cfg["proj_size"] = getattr(module, "proj_size", 0)
        if mode == "RNN":
            cfg["nonlinearity"] = module.nonlinearity
        cache.clear()
        cache[key] = json.dumps(cfg, sort_keys=True)
    return cache[key]


def _recording_portable_graph():
    """Whether torch is tracing (``jit.trace``) or exporting (``torch.export``): the
    artifact must load without fastrnn, so torch.nn's operators are recorded."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


class _Portable:
    """Pickling and copying: a checkpoint holds the torch.nn class, a deep copy ours."""

    _torch_class = None
    _PRIVATE = ("_fastrnn_config", "_fastrnn_cell")  # caches that a torch.nn module does not have

    def __reduce_ex__(self, protocol):
        # Unpickling constructs the torch.nn class (a small throwaway layer) and then
        # sets this module's state: both steps are ones torch.load(weights_only=True)
        # allows for an allowlisted torch.nn class.
        state = self.__getstate__() if hasattr(self, "__getstate__") else self.__dict__
        state = {k: v for k, v in state.items() if k not in self._PRIVATE}
        if self._torch_class.__module__ != "torch.nn.modules.rnn":
            # a converted subclass (its constructor may take other arguments): rebuilt
            # without calling it, as the user's class (needs weights_only=False, as any
            # subclass does unless allowlisted)
            return copyreg._reconstructor, (self._torch_class, object, None), state
        return self._torch_class, (self.input_size, self.hidden_size), state

    def _get_name(self):
        # repr: "fastrnn_torch.LSTM(3, 4)", so a printed model shows what convert() did
        return f"fastrnn_torch.{type(self).__name__}"

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k != "_flat_weight_refs"}
        new.__setstate__(copy.deepcopy(state, memo))
        return new


def _packed_order(batch_sizes, sorted_indices):
    """(time, batch) indices of a PackedSequence's rows, in packed order."""
    T = len(batch_sizes)
    B = int(batch_sizes[0])
    order = torch.arange(B) if sorted_indices is None else sorted_indices.cpu()
    t_idx = torch.repeat_interleave(torch.arange(T), batch_sizes)
    b_idx = torch.cat([order[: int(n)] for n in batch_sizes])
    return t_idx, b_idx


class _RNNMixin(_Portable):
    """forward() shared by RNN, LSTM and GRU."""

    _mode = None

    def forward(self, input, hx=None):
        weights = self._flat_weights
        if parametrize.is_parametrized(self):  # weight_norm etc.: computed at every call
            weights = [getattr(self, name) for name in self._flat_weights_names]
        data = input.data if isinstance(input, PackedSequence) else input
        if not _supported(data, weights) or _recording_portable_graph():
            return self._torch_class.forward(self, input, hx)
        lstm = self._mode == "LSTM"
        D = 2 if self.bidirectional else 1
        P = self.proj_size if lstm and self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            x, lengths = pad_packed_sequence(input)  # time-major, caller's batch order
            if hx is None:
                hx = self._zeros(x, D, P, lstm)
            self.check_forward_args(input.data, hx, input.batch_sizes)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{self._mode}: Expected input to be 2D or 3D, got {input.dim()}D instead"
                )
            unbatched = input.dim() == 2
            x = (
                input.unsqueeze(1)
                if unbatched
                else (input.transpose(0, 1) if self.batch_first else input)
            )
            lengths = torch.full((x.shape[1],), x.shape[0], dtype=torch.int64)
            if hx is not None:
                parts = hx if lstm else (hx,)
                want = 2 if unbatched else 3
                if any(h.dim() != want for h in parts):
                    raise RuntimeError(
                        f"For {'unbatched 2-D' if unbatched else 'batched 3-D'} "
                        f"input, hx should also be {want}-D but got "
                        f"{tuple(h.dim() for h in parts)}-D tensors"
                    )
                if unbatched:
                    hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
            else:
                hx = self._zeros(x, D, P, lstm)
            batched = input.unsqueeze(1 - int(self.batch_first)) if unbatched else input
            self.check_forward_args(batched, hx, None)
        B = x.shape[1]
        for h in hx if lstm else (hx,):
            _check_state_dtype(h, x)
        if x.shape[0] == 0 or B == 0:
            return self._torch_class.forward(self, input, hx)  # torch.nn's empty results
        h0, c0 = hx if lstm else (hx, x.new_empty((0,)))
        masks = []
        if self.training and self.dropout > 0 and self.num_layers > 1:
            masks = [
                x.new_empty((x.shape[0], B, D * P)).bernoulli_(1 - self.dropout)
                for _ in range(self.num_layers - 1)
            ]
        train = needs_grad([x, h0, c0] + list(weights))
        config = _config(self, self._mode, self.num_layers, x.dtype)
        y, hn, cn, _ = rnn(
            x.contiguous(),
            list(weights),
            h0.contiguous(),
            c0.contiguous(),
            lengths.to(torch.int64).contiguous(),
            masks,
            config,
            train,
        )
        state = (hn, cn) if lstm else hn
        if packed:
            t_idx, b_idx = _packed_order(input.batch_sizes, input.sorted_indices)
            out = PackedSequence(
                y[t_idx, b_idx], input.batch_sizes, input.sorted_indices, input.unsorted_indices
            )
            return out, state
        if unbatched:
            return y.squeeze(1), ((hn.squeeze(1), cn.squeeze(1)) if lstm else hn.squeeze(1))
        return (y.transpose(0, 1) if self.batch_first else y), state

    def _zeros(self, x, D, P, lstm):
        h = x.new_zeros((self.num_layers * D, x.shape[1], P))
        if lstm:
            return h, x.new_zeros((self.num_layers * D, x.shape[1], self.hidden_size))
        return h


class RNN(_RNNMixin, torch.nn.RNNBase):
    """torch.nn.RNN computed by fastrnn's kernels; same arguments as torch.nn.RNN."""

    _mode = "RNN"
    _torch_class = torch.nn.RNN

    def __init__(self, *args, **kwargs):
        # torch.nn.RNN's argument handling: nonlinearity is the 4th positional argument.
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        self.nonlinearity = nonlinearity
        super().__init__(modes[nonlinearity], *args, **kwargs)


class LSTM(_RNNMixin, torch.nn.RNNBase):
    """torch.nn.LSTM computed by fastrnn's kernels; same arguments as torch.nn.LSTM."""

    _mode = "LSTM"
    _torch_class = torch.nn.LSTM
    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    check_forward_args = torch.nn.LSTM.check_forward_args
    permute_hidden = torch.nn.LSTM.permute_hidden

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)


class GRU(_RNNMixin, torch.nn.RNNBase):
    """torch.nn.GRU computed by fastrnn's kernels; same arguments as torch.nn.GRU."""

    _mode = "GRU"
    _torch_class = torch.nn.GRU

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


class _CellMixin(_Portable):
    """forward() shared by the cells: one step of a one-layer model.

    A cell is called once per time step in a Python loop, so this path is written for
    its per-call cost: parameters read from ``_parameters`` (not through
    ``Module.__getattr__``), the configuration cached per dtype, one kernel call for a
    small step (``_cells.py``)."""

    _mode = None

    def _plain_step(self, input, hx):
        """The common call, recognised in a few attribute reads, or None: a 2-D CPU
        input, a state of its shape and dtype (or none), every tensor contiguous and
        plain, parameters of that dtype, eager mode (no tracing, compiling, export or
        functorch transform). Anything else takes :meth:`forward`'s general path, with
        torch.nn's checks and messages; a loop over time pays only this."""
        params = self._parameters
        dtype = input.dtype
        if (
            type(input) is not torch.Tensor
            or dtype not in _DTYPES
            or not input.is_cpu
            or _cuda.on_gpu(input)  # (True for CPU tensors in the simulator's tests)
            or input.layout is not _STRIDED
            or input.dim() != 2
            or not input.is_contiguous()
            or torch._C._are_functorch_transforms_active()
            or torch.compiler.is_compiling()
            or torch._C._get_tracing_state() is not None
            or torch.compiler.is_exporting()
        ):
            return None
        B, I = input.shape
        H = self.hidden_size
        if B == 0 or H == 0 or I != self.input_size:
            return None
        lstm = self._mode == "LSTM"
        if hx is None:
            h0 = input.new_zeros((B, H))
            c0 = h0 if lstm else None
        elif lstm:
            if type(hx) is not tuple or len(hx) != 2:
                return None
            h0, c0 = hx
            if not _plain_state(c0, dtype, B, H):
                return None
        else:
            h0, c0 = hx, None
        if hx is not None and not _plain_state(h0, dtype, B, H):
            return None
        G = self._gates * H
        w_ih, w_hh = params.get("weight_ih"), params.get("weight_hh")
        shaped = [(w_ih, (G, I)), (w_hh, (G, H))]
        b_ih = b_hh = None
        if self.bias:
            b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
            shaped += [(b_ih, (G,)), (b_hh, (G,))]
        for w, shape in shaped:
            if w is None or w.dtype != dtype or not w.is_cpu or not w.is_contiguous():
                return None  # parametrized (computed by a property), or not plain
            if w.shape != shape:
                return None
        train = torch.is_grad_enabled() and (
            input.requires_grad
            or h0.requires_grad
            or (lstm and c0.requires_grad)
            or w_ih.requires_grad
            or w_hh.requires_grad
            or (b_ih is not None and (b_ih.requires_grad or b_hh.requires_grad))
        )
        key = (dtype, H, I, self.bias, self.__dict__.get("nonlinearity"))
        cached = self.__dict__.get("_fastrnn_cell")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_fastrnn_cell"] = (key, _config(self, self._mode, 1, dtype))
        return _cells.checked_step(
            cached[1], input, h0, c0, w_ih, w_hh, b_ih, b_hh, train, owner=self
        )

    def _weights(self):
        params = self._parameters
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else _CELL_WEIGHTS
        found = [params.get(n) for n in names]
        for w in found:  # (not ``None in found``: that compares tensors with ==)
            if w is None:  # parametrized (weight_norm, ...): computed by the property
                return [getattr(self, n) for n in names]
        return found

    def forward(self, input, hx=None):
        out = self._plain_step(input, hx)
        if out is not None:
            return out
        weights = self._weights()
        if not _supported(input, weights) or _recording_portable_graph():
            return super().forward(input, hx)
        lstm = self._mode == "LSTM"
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        parts = () if hx is None else (hx if lstm else (hx,))
        if any(h.dim() not in (1, 2) for h in parts):
            raise ValueError(
                f"{name}: Expected hidden to be 1D or 2D, got "
                f"{tuple(h.dim() for h in parts)}D instead"
            )
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        B = x.shape[0]
        if input.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.shape[-1]} "
                f"expected {self.input_size}"
            )
        if hx is None:
            z = x.new_zeros((B, self.hidden_size))
            parts = (z, z) if lstm else (z,)
        else:
            parts = tuple(h.unsqueeze(0) if unbatched else h for h in parts)
            for i, h in enumerate(parts):  # torch.nn's checks and messages
                if h.shape[0] != B:
                    raise RuntimeError(
                        f"Input batch size {B} doesn't match hidden{i} batch size {h.shape[0]}"
                    )
                if h.shape[1] != self.hidden_size:
                    raise RuntimeError(
                        f"hidden{i} has inconsistent hidden_size: got {h.shape[1]}, "
                        f"expected {self.hidden_size}"
                    )
                _check_state_dtype(h, x)
        if B == 0 or self.hidden_size == 0:
            return super().forward(input, hx)  # empty results, as torch.nn computes them
        config = _config(self, self._mode, 1, x.dtype)
        train = needs_grad([x, *parts] + weights)
        if (
            not _cuda.on_gpu(x) and not graph_capture() and not _under_transform([x, *parts])
        ):  # the eager fast path: one fused step, forward and backward (see _cells.py)
            b_ih, b_hh = (weights[2], weights[3]) if self.bias else (None, None)
            h0 = parts[0].contiguous()
            c0 = parts[1].contiguous() if lstm else None
            out = _cells.step(
                config, x.contiguous(), h0, c0, weights[0], weights[1], b_ih, b_hh, train
            )
            if unbatched:
                return (out[0][0], out[1][0]) if lstm else out[0]
            return out
        h0 = parts[0].unsqueeze(0)
        c0 = parts[1].unsqueeze(0) if lstm else x.new_empty((0,))
        lengths = torch.ones(B, dtype=torch.int64)
        _, hn, cn, _ = rnn(
            x.unsqueeze(0).contiguous(),
            weights,
            h0.contiguous(),
            c0.contiguous(),
            lengths,
            [],
            config,
            train,
        )
        h1 = hn[0]
        if lstm:
            c1 = cn[0]
            return (h1[0], c1[0]) if unbatched else (h1, c1)
        return h1[0] if unbatched else h1


_CELL_WEIGHTS = ("weight_ih", "weight_hh")


class RNNCell(_CellMixin, torch.nn.RNNCell):
    """torch.nn.RNNCell computed by fastrnn's kernels."""

    _mode = "RNN"
    _torch_class = torch.nn.RNNCell
    _gates = 1


class LSTMCell(_CellMixin, torch.nn.LSTMCell):
    """torch.nn.LSTMCell computed by fastrnn's kernels."""

    _mode = "LSTM"
    _torch_class = torch.nn.LSTMCell
    _gates = 4


class GRUCell(_CellMixin, torch.nn.GRUCell):
    """torch.nn.GRUCell computed by fastrnn's kernels."""

    _mode = "GRU"
    _torch_class = torch.nn.GRUCell
    _gates = 3
