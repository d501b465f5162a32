"""Every ```python block of README.md and docs/ runs as written.

Each block runs on its own (a fresh namespace, in a temporary directory for the
files it writes): a reader can paste any one of them. GPU blocks run on the CUDA
simulator here (conftest), on the device with FASTRNN_TEST_GPU=1.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    for page in PAGES:
        text = page.read_text()
        for number, match in enumerate(BLOCK.finditer(text), 1):
            line = text[: match.start()].count("\n") + 2
            yield pytest.param(page, line, match.group(1), id=f"{page.relative_to(ROOT)}:{number}")


def test_there_are_blocks_to_run():
    assert len(list(_blocks())) >= 10


@pytest.mark.parametrize("page, line, source", list(_blocks()))
def test_block_runs(page, line, source, tmp_path, monkeypatch, fast_simulator):
    if "torch" in source:
        pytest.importorskip("torch", reason="this block uses torch (the core's run has none)")
    monkeypatch.chdir(tmp_path)
    code = compile("\n" * (line - 1) + source, str(page), "exec")
    exec(code, {"__name__": "__docs__"})
