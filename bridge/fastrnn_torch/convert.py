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


def convert(model, *, return_swapped=False):
    """Make every torch.nn RNN/LSTM/GRU(+Cell) inside ``model`` (itself included) run on fastrnn.

    The swap happens in place by changing each module's class to its fastrnn_torch
    twin (same attributes, see ``fastrnn_torch.modules``): the Parameter objects
    stay the same, so an optimizer built before the call keeps working, and
    ``state_dict`` is unchanged.

    After the swap ``isinstance(m, torch.nn.LSTM)`` is False for the layers (they
    derive from ``torch.nn.RNNBase``, which ``torch.compile`` can trace); find
    converted modules with ``isinstance(m, (fastrnn_torch.RNN, fastrnn_torch.LSTM,
    fastrnn_torch.GRU))`` or ``return_swapped=True``. ``torch.save(model)`` writes
    them as their torch.nn classes: the checkpoint loads without fastrnn_torch
    (``convert`` again after loading).

    Parameters
    ----------
    model : torch.nn.Module
    return_swapped : bool, default False
        Also return the qualified names (as in ``model.named_modules()``, ``""``
        for ``model`` itself) of the modules that were swapped.

    Returns
    -------
    model : torch.nn.Module
        With ``return_swapped``, the tuple ``(model, names)``.
    """
    swapped = []
    for name, module in model.named_modules():
        replacement = _SWAPS.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
            swapped.append(name)
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
