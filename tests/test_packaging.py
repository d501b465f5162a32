"""The core never imports torch, and imports quickly."""

import subprocess
import sys


def test_core_does_not_import_torch():
    code = (
        "import sys, numpy as np, fastrnn; m = fastrnn.GRU(2, 3); "
        "m(np.zeros((2, 1, 2), np.float32)); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bridge_package_is_installed():
    import fastrnn_torch  # noqa: F401
