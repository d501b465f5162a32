"""tools/asv_report.py: the offline report built from asv's result files."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLUMNS = ["result", "params", "version", "started_at", "duration"]


def _tool():
    spec = importlib.util.spec_from_file_location("asv_report", ROOT / "tools" / "asv_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(folder, commit, date, step_times, speedups):
    run = {
        "commit_hash": commit,
        "date": date,
        "params": {"cpu": "Test CPU", "num_cpu": "2"},
        "result_columns": COLUMNS,
        "version": 2,
        "results": {
            "bench.Step.time_step": [
                step_times,
                [["'LSTM'", "'GRU'"], ["'fastrnn'", "'torch'"]],
                "v",
                0,
                1.0,
            ],
            "bench.Speedup.track_speedup": [speedups, [["'LSTM'", "'GRU'"]], "v", 0, 1.0],
        },
    }
    (folder / f"{commit[:8]}-env.json").write_text(json.dumps(run))


def test_report_tables_ratios_and_charts(tmp_path):
    pytest.importorskip("matplotlib", reason="the charts need matplotlib")
    results = tmp_path / "results"
    (results / "vm").mkdir(parents=True)
    (results / "vm" / "machine.json").write_text("{}")
    (results / "benchmarks.json").write_text(
        json.dumps(
            {
                "bench.Step.time_step": {"param_names": ["mode", "engine"]},
                "bench.Speedup.track_speedup": {"param_names": ["mode"], "unit": "x faster"},
            }
        )
    )
    _write_run(results / "vm", "a" * 40, 1000, [1e-5, 3e-5, 2e-5, 1e-5], [1.5, 0.8])
    _write_run(results / "vm", "b" * 40, 2000, [1e-5, 4e-5, 2e-5, 1e-5], [2.0, 0.9])
    out = tmp_path / "report"
    assert _tool().main(["--results", str(results), "--out", str(out)]) == 0
    md = (out / "index.md").read_text()
    # newest commit only: LSTM torch/fastrnn = 4x, GRU = 0.5x
    assert "| LSTM | 10.0 us | 40.0 us | 4.00x |" in md
    assert "| GRU | 20.0 us | 10.0 us | 0.50x |" in md
    assert "commit bbbbbbbb" in md and "| mode=GRU | 0.9 x faster |" in md.replace(
        "bench.Speedup.track_speedup | ", ""
    )
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["bench_Step_time_step_vs_torch.png", "history_bench_Speedup_track_speedup.png"]
    assert (
        "<img" in (out / "index.html").read_text()
        and "http" not in (out / "index.html").read_text()
    )


def test_report_without_results_says_so(tmp_path, capsys):
    assert _tool().main(["--results", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "make asv" in capsys.readouterr().err
