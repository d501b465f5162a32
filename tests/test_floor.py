"""tools/floor.py: the measured floor under the batch-1 rows (bytes and multiply-adds)."""

import importlib.util
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("floor", ROOT / "tools" / "floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_reads_every_weight_and_reports_every_row(capsys):
    floor = _tool()
    for n in (7, 4096, 9000):  # within a block, one block, blocks and a partial one
        flat = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        for back in (False, True):
            assert abs(floor._read_all(flat, back) - flat.astype(np.float64).sum()) < 1e-3
    table, rate = floor.rows(hidden=8, repeats=1)
    assert rate > 0
    labels = [label for label, _, _ in table]
    assert len(labels) == 6 and all(" B=1 H=8" in label for label in labels)
    assert all(f > 0 and ours > 0 for _, f, ours in table)
    floor.main(["--hidden", "8", "--repeats", "1"])
    assert "fastrnn/floor" in capsys.readouterr().out
