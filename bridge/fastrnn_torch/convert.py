"""Swap torch.nn recurrent modules for fastrnn's, and export weights for the core."""

import json
import os

import numpy as np
import torch

from fastrnn.io import FORMAT_VERSION, save_safetensors

from . import modules

_SWAPS = {
    torch.nn.RNN: modules.RNN,
    torch.nn.LSTM: modules.LSTM,
    torch.nn.GRU: modules.GRU,
    torch.nn.RNNCell: modules.RNNCell,
    torch.nn.LSTMCell: modules.LSTMCell,
    torch.nn.GRUCell: modules.GRUCell,
}

__all__ = ["convert", "export"]


_SUBCLASSES = {}  # user subclass of a torch.nn recurrent class -> its fastrnn twin


def _replacement(cls):
    """The fastrnn_torch class for ``cls``, or None when ``cls`` is not recurrent.

    A subclass of a torch.nn recurrent class (a user's own, or the class
    ``torch.nn.utils.parametrize`` creates for weight_norm/spectral_norm) gets a twin
    that derives from both, fastrnn's ``forward`` first, so the subclass's other
    methods and properties keep working.
    """
    if cls in _SWAPS:
        return _SWAPS[cls]
    if cls in _SUBCLASSES:
        return _SUBCLASSES[cls]
    base = next((b for b in cls.__mro__[1:] if b in _SWAPS), None)
    if base is None or issubclass(cls, tuple(_SWAPS.values())):
        return None
    own = [b for b in cls.__mro__[: cls.__mro__.index(base)] if "forward" in vars(b)]
    if own:
        raise TypeError(
            f"convert: {own[0].__qualname__} overrides forward(), which fastrnn's module would "
            f"replace; make it hold a {base.__name__} (e.g. self.rnn = nn.{base.__name__}(...)) "
            f"and convert that, or use fastrnn_torch.{base.__name__} in it directly"
        )
    twin = type(
        cls.__name__,
        (_SWAPS[base], cls),
        {
            "_torch_class": cls,  # pickles as the user's class, like the original module
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        },
    )
    _SUBCLASSES[cls] = twin
    return twin


def convert(model, *, strict=False, return_swapped=False):
    """Make every torch.nn RNN/LSTM/GRU(+Cell) inside ``model`` (itself included) run on fastrnn.

    The swap happens in place by changing each module's class to its fastrnn_torch
    twin (same attributes, see ``fastrnn_torch.modules``): the Parameter objects
    stay the same, so an optimizer built before the call keeps working, and
    ``state_dict`` is unchanged. Subclasses are swapped too (their own methods are
    kept; one that overrides ``forward`` is refused), and so are modules with
    parametrizations (``weight_norm``, ``spectral_norm``: the weights are computed at
    every call, as torch does).

    After the swap ``isinstance(m, torch.nn.LSTM)`` is False for the layers (they
    derive from ``torch.nn.RNNBase``, which ``torch.compile`` can trace); find
    converted modules with ``isinstance(m, (fastrnn_torch.RNN, fastrnn_torch.LSTM,
    fastrnn_torch.GRU))`` or ``return_swapped=True``. ``torch.save(model)`` writes
    them as their torch.nn classes: the checkpoint loads without fastrnn_torch
    (``convert`` again after loading).

    Parameters
    ----------
    model : torch.nn.Module
        Not a TorchScript module (convert before ``torch.jit.script``).
    strict : bool, default False
        Raise ``ValueError`` if nothing was swapped.
    return_swapped : bool, default False
        Also return the qualified names (as in ``model.named_modules()``, ``""``
        for ``model`` itself) of the modules that were swapped.

    Returns
    -------
    model : torch.nn.Module
        With ``return_swapped``, the tuple ``(model, names)``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule) or any(
        isinstance(m, torch.jit.ScriptModule) for m in model.modules()
    ):
        raise TypeError(
            "convert: the model is (or holds) a TorchScript module (torch.jit.script), whose "
            "code is compiled and cannot be swapped; convert the eager model first, then "
            "script or compile it"
        )
    plan = [(name, module, _replacement(type(module))) for name, module in model.named_modules()]
    swapped = []
    for name, module, replacement in plan:
        if replacement is not None:
            module.__class__ = replacement
            swapped.append(name)
    if strict and not swapped:
        raise ValueError(
            f"convert(strict=True): no torch.nn RNN, LSTM, GRU or *Cell found in "
            f"{type(model).__name__} (already converted modules are not counted)"
        )
    return (model, swapped) if return_swapped else model


def _core_description(module):
    """(class name, constructor config) of the fastrnn core model matching ``module``."""
    for base, name in (  # noqa: B007 (name is used after the loop)
        (torch.nn.LSTM, "LSTM"),
        (torch.nn.GRU, "GRU"),
        (torch.nn.RNN, "RNN"),
        (modules.LSTM, "LSTM"),
        (modules.GRU, "GRU"),
        (modules.RNN, "RNN"),
        (torch.nn.LSTMCell, "LSTMCell"),
        (torch.nn.GRUCell, "GRUCell"),
        (torch.nn.RNNCell, "RNNCell"),
    ):
        if isinstance(module, base):
            break
    else:
        raise TypeError(
            f"module must be a torch.nn RNN, LSTM, GRU or *Cell; got {type(module).__name__}"
        )
    cfg = dict(input_size=module.input_size, hidden_size=module.hidden_size, bias=module.bias)
    if not name.endswith("Cell"):
        cfg.update(
            num_layers=module.num_layers,
            batch_first=module.batch_first,
            dropout=float(module.dropout),
            bidirectional=module.bidirectional,
        )
        if name == "LSTM":
            cfg["proj_size"] = module.proj_size
    if name.startswith("RNN"):
        cfg["nonlinearity"] = module.nonlinearity
    return name, cfg


def export(module, path):
    """Write ``module``'s weights and configuration to a ``.safetensors`` file that
    ``fastrnn.load(path)`` reads without torch.

    float32/float64 parameters keep their dtype; any other floating dtype is stored
    as float32.
    """
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"path must end in '.safetensors'; got {path!r}")
    name, cfg = _core_description(module)
    tensors = {}
    for key, value in module.state_dict().items():
        arr = value.detach().cpu()
        if arr.dtype not in (torch.float32, torch.float64):
            arr = arr.float()
        tensors[key] = np.ascontiguousarray(arr.numpy())
    cfg["dtype"] = "float64" if all(a.dtype == np.float64 for a in tensors.values()) else "float32"
    tensors = {k: v.astype(cfg["dtype"]) for k, v in tensors.items()}
    for key, value in tensors.items():  # a file fastrnn.load would refuse is not written
        if not np.all(np.isfinite(value)):
            raise ValueError(
                f"{key} has non-finite values (NaN or inf) in {cfg['dtype']}; not exported"
            )
    spec = {"class": name, "config": cfg, "format_version": FORMAT_VERSION, "weights": cfg["dtype"]}
    meta = {"__fastrnn_config__": json.dumps(spec), "format": "pt"}
    save_safetensors(path, tensors, meta)  # atomic: a failed export keeps the old file
