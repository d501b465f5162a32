"""convert() on the modules people really have: subclasses, parametrized weights,
TorchScript; each compared with an unconverted torch.nn twin."""

import copy

import pytest
import torch
from torch.nn.utils import parametrizations

import fastrnn_torch as frt

TOL = 1e-5  # float32, fastrnn's kernels against torch.nn's


class WideLSTM(torch.nn.LSTM):
    """A user subclass with its own constructor and method."""

    def __init__(self, n):
        super().__init__(n, 2 * n, num_layers=2)

    def state_width(self):
        return self.hidden_size * self.num_layers


class ScaledGRU(torch.nn.GRU):
    def forward(self, x, hx=None):
        return super().forward(2 * x, hx)


class TaggedCell(torch.nn.GRUCell):
    tag = "mine"


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters()}


def _check_twins(ours, theirs, x):
    y1, y2 = ours(x), theirs(x)
    y1 = y1[0] if isinstance(y1, tuple) else y1
    y2 = y2[0] if isinstance(y2, tuple) else y2
    assert (y1 - y2).abs().max() < TOL
    y1.square().sum().backward()
    y2.square().sum().backward()
    g1, g2 = _grads(ours), _grads(theirs)
    assert g1.keys() == g2.keys()
    for name in g1:
        assert (g1[name] - g2[name]).abs().max() < 1e-4 * max(1.0, g2[name].abs().max()), name


def test_subclass_keeps_its_methods_and_matches_torch():
    torch.manual_seed(0)
    theirs = WideLSTM(3)
    ours = copy.deepcopy(theirs)
    model, names = frt.convert(ours, return_swapped=True)
    assert names == [""]
    assert isinstance(ours, WideLSTM) and isinstance(ours, frt.LSTM)
    assert ours.state_width() == 12 and repr(ours).startswith("fastrnn_torch.WideLSTM(")
    _check_twins(ours, theirs, torch.randn(5, 2, 3))
    cell, twin = TaggedCell(3, 4), None
    twin = copy.deepcopy(cell)
    frt.convert(cell)
    assert cell.tag == "mine" and isinstance(cell, frt.GRUCell)
    _check_twins(cell, twin, torch.randn(2, 3))


def test_subclass_overriding_forward_is_refused_with_advice():
    with pytest.raises(TypeError, match="ScaledGRU overrides forward"):
        frt.convert(torch.nn.Sequential(ScaledGRU(3, 4)))


@pytest.mark.parametrize("how", ["weight_norm", "spectral_norm", "old_weight_norm"])
@pytest.mark.parametrize("cls", [torch.nn.GRU, torch.nn.LSTMCell])
def test_parametrized_weights_are_computed_at_every_call(how, cls):
    torch.manual_seed(1)
    name = "weight_hh_l0" if cls is torch.nn.GRU else "weight_hh"
    a, b = cls(3, 4), cls(3, 4)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        if how == "old_weight_norm":
            torch.nn.utils.weight_norm(m, name)
        else:
            getattr(parametrizations, how)(m, name)
    frt.convert(a, strict=True)
    assert isinstance(a, (frt.GRU, frt.LSTMCell))
    x = torch.randn(5, 2, 3) if cls is torch.nn.GRU else torch.randn(2, 3)
    if how == "spectral_norm":  # power iteration updates buffers in training mode
        a.eval()
        b.eval()
    _check_twins(a, b, x)


def test_torchscript_is_refused_and_strict_reports_nothing_swapped():
    with pytest.raises(TypeError, match="TorchScript"):
        frt.convert(torch.jit.script(torch.nn.GRU(3, 4)))
    with pytest.raises(ValueError, match="strict"):
        frt.convert(torch.nn.Linear(3, 4), strict=True)
    assert frt.convert(torch.nn.Linear(3, 4), return_swapped=True)[1] == []
    with pytest.raises(TypeError, match="torch.nn.Module"):
        frt.convert("model")
