"""save/load round trips; safetensors files interoperate with the safetensors package."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import fastrnn
from fastrnn.io import load_safetensors

from .helpers import CELLS, KINDS, make_pair


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip_is_exact(kind, suffix, tmp_path, rng):
    m, _ = make_pair(kind, 3, 5, "float64", num_layers=2, bidirectional=True, batch_first=True)
    path = tmp_path / f"model{suffix}"
    fastrnn.save(m, path)
    m2 = fastrnn.load(path)
    assert type(m2) is type(m) and m2.config() == m.config()
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[k], v)
    x = rng.standard_normal((2, 4, 3))
    np.testing.assert_array_equal(m2(x)[0], m(x)[0])


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cells_round_trip(kind, tmp_path):
    cell, _ = make_pair(kind, 3, 5, "float32", table=CELLS)
    fastrnn.save(cell, tmp_path / "c.safetensors")
    cell2 = fastrnn.load(tmp_path / "c.safetensors")
    assert cell2.config() == cell.config()
    for k, v in cell.state_dict().items():
        np.testing.assert_array_equal(cell2.state_dict()[k], v)


def test_safetensors_interop(tmp_path):
    m = fastrnn.LSTM(3, 4, proj_size=2, seed=0)
    fastrnn.save(m, tmp_path / "a.safetensors")
    theirs = load_file(tmp_path / "a.safetensors")
    assert set(theirs) == set(m.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(theirs[k], v)
    save_file(
        {"w": np.arange(6, dtype=np.float64).reshape(2, 3)},
        tmp_path / "b.safetensors",
        metadata={"k": "v"},
    )
    tensors, meta = load_safetensors(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(tensors["w"], np.arange(6.0).reshape(2, 3))
    assert meta == {"k": "v"}


def test_loads_torch_state_dict_tensors():
    tm = torch.nn.GRU(3, 4, num_layers=2)
    m = fastrnn.GRU(3, 4, num_layers=2)
    m.load_state_dict(tm.state_dict())
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v.numpy())


def test_bad_files_raise_clearly(tmp_path):
    m = fastrnn.LSTM(3, 4)
    with pytest.raises(ValueError, match="must end in"):
        fastrnn.save(m, tmp_path / "model.pt")
    sd = m.state_dict()
    save_file(sd, tmp_path / "nocfg.safetensors")
    with pytest.raises(ValueError, match="no fastrnn configuration"):
        fastrnn.load(tmp_path / "nocfg.safetensors")
    cfg = json.dumps({"class": "LSTM", "config": {"input_size": 3, "hidden_size": 5}})
    save_file(sd, tmp_path / "shape.safetensors", metadata={"__fastrnn_config__": cfg})
    with pytest.raises(ValueError, match=r"weight_ih_l0.*\(20, 3\).*\(16, 3\)"):
        fastrnn.load(tmp_path / "shape.safetensors")
    bad = dict(sd)
    bad["weight_hh_l0"] = np.full_like(sd["weight_hh_l0"], np.nan)
    cfg = json.dumps({"class": "LSTM", "config": m.config()})
    save_file(bad, tmp_path / "nan.safetensors", metadata={"__fastrnn_config__": cfg})
    with pytest.raises(ValueError, match="non-finite"):
        fastrnn.load(tmp_path / "nan.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="not a safetensors file"):
        fastrnn.load(tmp_path / "junk.safetensors")
    np.savez(tmp_path / "evil.npz", x=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        fastrnn.load(tmp_path / "evil.npz")  # object arrays need pickle: refused
