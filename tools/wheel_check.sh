#!/usr/bin/env bash
# Build the wheel and sdist, install the wheel (not editable) with its torch extra into a
# fresh virtual environment, and smoke-test it from a directory outside the checkout:
# what a new user gets from `pip install fastrnn`. Usage: tools/wheel_check.sh PYTHON
set -euo pipefail
PY=${1:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m build --wheel --sdist --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; exit 1; }
ls "$WORK/dist"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet -c "$ROOT/requirements-dev.txt" \
    "$(ls "$WORK"/dist/*.whl)[torch]" numba-cuda 2>&1 | grep -v "^WARNING: Location" || true
cd "$WORK"  # outside the checkout: nothing from the source tree can be imported
"$WORK/venv/bin/fastrnn" --version
NUMBA_ENABLE_CUDASIM=1 "$WORK/venv/bin/python" - "$ROOT" <<'PY'
import os, sys
import numpy as np
import torch
import fastrnn, fastrnn.cuda, fastrnn_torch
root = sys.argv[1]
for mod in (fastrnn, fastrnn.cuda, fastrnn_torch):
    assert not os.path.abspath(mod.__file__).startswith(root), f"{mod.__name__} from the checkout"
assert fastrnn_torch.__version__ == fastrnn.__version__
x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
tm = torch.nn.LSTM(3, 4)
m = fastrnn.LSTM(3, 4)
m.load_state_dict(tm.state_dict())
y, _ = m(x)
assert np.abs(y - tm(torch.from_numpy(x))[0].detach().numpy()).max() < 1e-5
from numba import cuda
yd, _ = m(cuda.to_device(x))                      # fastrnn.cuda on the simulator
assert np.abs(yd.copy_to_host() - y).max() < 1e-5
frt = fastrnn_torch.convert(torch.nn.GRU(3, 4))
assert type(frt).__module__ == "fastrnn_torch.modules"
frt(torch.from_numpy(x))[0].sum().backward()
print(f"wheel smoke test passed: fastrnn {fastrnn.__version__} from {os.path.dirname(fastrnn.__file__)}")
PY
