"""Converted models survive torch.save / torch.load like torch.nn's (issue: checkpoints).

Each path saves a converted model here and loads it in a fresh Python process that
never imports fastrnn or fastrnn_torch; the loaded model's outputs are compared with a
torch.nn twin that holds the same weights.
"""

import copy
import io
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.serialization import get_unsafe_globals_in_checkpoint

import fastrnn_torch as frt

TOL = 1e-5  # float32 forward, fastrnn's kernels against torch.nn's

# A third-party model: every layer and cell type, dropout, proj_size, bidirectional.
MODEL_SOURCE = textwrap.dedent("""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 6, num_layers=2, dropout=0.25, proj_size=4,
                                      bidirectional=True)
            self.gru = torch.nn.GRU(8, 5, batch_first=True)
            self.rnn = torch.nn.RNN(5, 4, nonlinearity="relu")
            self.lstm_cell = torch.nn.LSTMCell(4, 3)
            self.gru_cell = torch.nn.GRUCell(3, 3)
            self.rnn_cell = torch.nn.RNNCell(3, 2)

        def forward(self, x):
            y, _ = self.lstm(x)
            y, _ = self.gru(y.transpose(0, 1))
            y, _ = self.rnn(y.transpose(0, 1))
            h, c = self.lstm_cell(y[-1])
            h = self.gru_cell(h)
            return self.rnn_cell(h)

    SAFE = [Net, torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN, torch.nn.LSTMCell,
            torch.nn.GRUCell, torch.nn.RNNCell]
""")

LOADER = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    import ckpt_model
    path, how = sys.argv[2], sys.argv[3]
    x = torch.load(sys.argv[4])
    if how == "weights_only":
        with torch.serialization.safe_globals(ckpt_model.SAFE):
            model = torch.load(path)          # weights_only=True, torch's default
    elif how == "full":
        model = torch.load(path, weights_only=False)
    elif how == "state_dict":
        model = ckpt_model.Net()
        model.load_state_dict(torch.load(path))
    elif how == "jit_trace":
        model = torch.jit.load(path)
    elif how == "export":
        model = torch.export.load(path).module()
    if hasattr(model, "eval") and how != "export":
        model.eval()
    with torch.no_grad():
        torch.save(model(x), sys.argv[5])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("fastrnn", "fastrnn_torch"))
    print(json.dumps({"type": type(model).__name__, "leaked": leaked}))
""")


@pytest.fixture
def model_module(tmp_path, monkeypatch):
    (tmp_path / "ckpt_model.py").write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("ckpt_model", None)
    import ckpt_model

    yield ckpt_model
    sys.modules.pop("ckpt_model", None)


def _twins(ckpt_model):
    torch.manual_seed(0)
    reference = ckpt_model.Net().eval()
    converted = copy.deepcopy(reference)
    _, swapped = frt.convert(converted, return_swapped=True)
    assert swapped == ["lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell"]
    return reference, converted


def _load_elsewhere(tmp_path, path, how, x):
    (tmp_path / "loader.py").write_text(LOADER)
    torch.save(x, tmp_path / "x.pt")
    out = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "loader.py"),
            str(tmp_path),
            str(path),
            how,
            str(tmp_path / "x.pt"),
            str(tmp_path / "y.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["leaked"] == [], "the loading process imported fastrnn"
    return info, torch.load(tmp_path / "y.pt")


@pytest.mark.parametrize("how", ["weights_only", "full", "state_dict", "jit_trace", "export"])
def test_checkpoint_loads_without_fastrnn(how, model_module, tmp_path):
    reference, converted = _twins(model_module)
    x = torch.randn(5, 2, 3)
    path = tmp_path / "model.ckpt"
    with torch.no_grad():
        ours = converted(x)
        theirs = reference(x)
    assert (ours - theirs).abs().max() < TOL
    if how in ("weights_only", "full"):
        torch.save(converted, path)
    elif how == "state_dict":
        torch.save(converted.state_dict(), path)
    elif how == "jit_trace":
        torch.jit.save(torch.jit.trace(converted, (x,)), path)
    else:
        torch.export.save(torch.export.export(converted, (x,)), path)
    info, loaded = _load_elsewhere(tmp_path, path, how, x)
    if how in ("weights_only", "full"):
        assert info["type"] == "Net"
    assert (loaded - theirs).abs().max() < TOL
    assert (loaded - ours).abs().max() < TOL


def test_checkpoint_needs_the_globals_torch_nn_needs(model_module):
    reference, converted = _twins(model_module)
    found = []
    for model in (reference, converted):
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        found.append(sorted(get_unsafe_globals_in_checkpoint(buf)))
    assert found[0] == found[1]
    assert not any("fastrnn" in name for name in found[1])


def test_checkpoint_reloads_as_torch_nn_and_converts_again(model_module):
    reference, converted = _twins(model_module)
    buf = io.BytesIO()
    torch.save(converted, buf)
    buf.seek(0)
    with torch.serialization.safe_globals(model_module.SAFE):
        loaded = torch.load(buf)
    assert type(loaded.lstm) is torch.nn.LSTM and type(loaded.rnn_cell) is torch.nn.RNNCell
    assert type(converted.lstm) is frt.LSTM  # saving did not touch the live model
    frt.convert(loaded)
    assert type(loaded.lstm) is frt.LSTM
    x = torch.randn(4, 3, 3)
    with torch.no_grad():
        assert (loaded(x) - reference(x)).abs().max() < TOL


def test_deepcopy_keeps_fastrnn_and_owns_its_parameters(model_module):
    reference, converted = _twins(model_module)
    dup = copy.deepcopy(converted)
    assert type(dup.lstm) is frt.LSTM and type(dup.gru_cell) is frt.GRUCell
    assert dup.lstm.weight_hh_l0 is not converted.lstm.weight_hh_l0
    x = torch.randn(4, 3, 3)
    with torch.no_grad():
        assert (dup(x) - reference(x)).abs().max() < TOL
        dup.lstm.weight_hh_l0.add_(1.0)  # the copy's parameters are its own
        assert (converted(x) - reference(x)).abs().max() < TOL
    # and the copy still trains: every parameter gets a gradient
    dup.train()
    dup(x).sum().backward()
    assert all(p.grad is not None for p in dup.parameters())


def test_convert_return_swapped_lists_root_and_nothing_twice():
    lstm = torch.nn.LSTM(3, 4)
    model, names = frt.convert(lstm, return_swapped=True)
    assert model is lstm and names == [""]
    assert frt.convert(lstm, return_swapped=True)[1] == []  # already converted


def test_repr_shows_fastrnn():
    model = torch.nn.Sequential(torch.nn.GRUCell(3, 4))
    before = repr(model)
    frt.convert(model)
    assert repr(model) == before.replace("GRUCell(", "fastrnn_torch.GRUCell(")
    assert repr(frt.LSTM(3, 4, num_layers=2)) == "fastrnn_torch.LSTM(3, 4, num_layers=2)"


def test_export_refuses_what_load_would_refuse(tmp_path):
    import fastrnn

    gru = torch.nn.GRU(3, 4)
    path = tmp_path / "gru.safetensors"
    frt.export(gru, path)
    good = path.read_bytes()
    with torch.no_grad():
        gru.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight_hh_l0.*non-finite"):
        frt.export(gru, path)
    assert path.read_bytes() == good  # the earlier export is untouched
    assert fastrnn.load(path).hidden_size == 4
