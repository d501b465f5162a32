"""The shape of the code, checked from the tree: imports in one direction (kernels <-
engine <- models <- bridge), the bridge on fastrnn's public names only, and no module or
class too large to read."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = sorted((ROOT / "fastrnn").rglob("*.py"))
BRIDGE = sorted((ROOT / "bridge" / "fastrnn_torch").rglob("*.py"))
MAX_MODULE_LINES, MAX_CLASS_LINES = 500, 300


def _rel(path):
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", CORE + BRIDGE, ids=_rel)
def test_modules_and_classes_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"class {node.name}: {length} lines"


def test_core_never_mentions_the_bridge():
    offenders = [_rel(p) for p in CORE if "fastrnn_torch" in p.read_text()]
    assert offenders == []


def _private(dotted):
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _bridge_uses_of_private_names(path):
    """``(line, what)`` for every private fastrnn module or name the file imports, and
    every underscore attribute it reads from a fastrnn module it imported."""
    tree = ast.parse(path.read_text())
    found, fastrnn_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fastrnn":
            for alias in node.names:
                if _private(node.module) or _private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
                fastrnn_names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fastrnn":
                    if _private(alias.name):
                        found.append((node.lineno, f"import {alias.name}"))
                    fastrnn_names.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in fastrnn_names:
                found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize("path", BRIDGE, ids=_rel)
def test_bridge_uses_only_public_names_of_fastrnn(path):
    assert _bridge_uses_of_private_names(path) == []


def test_the_private_name_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import fastrnn\nfrom fastrnn.cuda import _device\nfrom fastrnn import engine\n"
        "engine._constants(1)\nfastrnn.cuda._device.empty(1)\n"
    )
    assert [line for line, _ in _bridge_uses_of_private_names(bad)] == [2, 4, 5]
