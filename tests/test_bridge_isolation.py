"""Importing the bridge changes nothing in fastrnn; the core never imports the bridge."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

SNAPSHOT = """
import sys, json, importlib, pkgutil
import fastrnn
import fastrnn.cuda.linalg
names = [m.name for m in pkgutil.walk_packages(fastrnn.__path__, "fastrnn.")
         if not m.name.endswith("_cuda")
         and not m.name.startswith(("fastrnn.cuda.recurrence", "fastrnn.cuda.backend",
                                    "fastrnn.cuda._device", "fastrnn._device_inputs"))]
mods = [importlib.import_module(n) for n in ["fastrnn"] + names]
def snap():
    return {m.__name__: {k: id(v) for k, v in vars(m).items() if not k.startswith("__")}
            for m in mods}
def gemms():
    import fastrnn.linalg as L
    return (L._DEFAULT[0].__name__, L._CURRENT.get(), fastrnn.cuda.linalg._DEFAULT[0].__name__)
before, g0 = snap(), gemms()
import torch, fastrnn_torch as frt
frt.GRU(3, 4)(torch.randn(5, 2, 3))[0].sum().backward()   # use it, too
after, g1 = snap(), gemms()
changed = sorted(f"{m}.{k}" for m in before for k in before[m] if after[m].get(k) != before[m][k])
print(json.dumps({"changed": changed, "gemm": [str(g0), str(g1)]}))
"""


def test_importing_and_using_the_bridge_changes_nothing_in_fastrnn():
    import json

    out = subprocess.run(
        [sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["changed"] == []
    assert result["gemm"][0] == result["gemm"][1]


def test_core_never_names_the_bridge():
    """Not even lazily: `fastrnn bench` finds the bridge through an entry point."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "fastrnn").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "fastrnn_torch" in line
    ]
    assert offenders == []


def test_bench_finds_its_comparisons_through_entry_points():
    from importlib.metadata import entry_points

    from fastrnn import cli

    names = {ep.name: ep.value for ep in entry_points(group="fastrnn.bench")}
    assert names == {"cpu": "fastrnn_torch.bench:main", "gpu": "fastrnn_torch.bench_gpu:main"}
    assert cli._bench_runner("cpu").__module__ == "fastrnn_torch.bench"
