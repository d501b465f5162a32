"""Model pairs for the benchmarks: a fastrnn model and its torch.nn twin, same weights.

Every benchmark's ``setup`` checks parity once (``check_close``), so a fast but
wrong kernel cannot hide on the dashboard.
"""

import numpy as np
import torch

import fastrnn
from fastrnn_torch.bench import onnx_session  # noqa: F401  (re-exported for the benchmarks)

torch.set_num_threads(1)
fastrnn.set_num_threads(1)

#: Thread counts of the multi-core benchmarks (those past this machine's CPUs skip).
THREADS = [1, 2]
ENGINES = ["fastrnn", "torch"]
INFERENCE_ENGINES = ["fastrnn", "torch", "onnxruntime"]
FASTRNN = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN": fastrnn.RNN}
TORCH = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}
TORCH_CELL = {"LSTM": torch.nn.LSTMCell, "GRU": torch.nn.GRUCell, "RNN": torch.nn.RNNCell}


def model_pair(mode, size, cell=False):
    """``(fastrnn model, torch module)`` with identical float32 weights."""
    torch.manual_seed(0)
    tm = (TORCH_CELL if cell else TORCH)[mode](size, size).eval()
    sd = tm.state_dict()
    if cell:
        sd = {k + "_l0": v for k, v in sd.items()}
    m = FASTRNN[mode](size, size)
    m.load_state_dict(sd)
    return m, tm


def inputs(T, B, size):
    return np.random.default_rng(0).standard_normal((T, B, size)).astype(np.float32)


def check_close(ours, theirs, what, tol=1e-4):
    """Raise if two outputs differ: benchmarks of wrong results are worthless."""
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    err = float(np.max(np.abs(np.asarray(ours) - theirs)))
    if not err <= tol:
        raise AssertionError(f"{what}: fastrnn differs from the reference by {err:.3g}")


def use_threads(n):
    """Give fastrnn and torch ``n`` threads (onnxruntime sessions take ``n`` too);
    NotImplementedError (asv: skipped) past the CPUs this process may run on."""
    if n > fastrnn.threads.available_cpus():
        raise NotImplementedError(f"{n} threads: more than this machine's CPUs")
    fastrnn.set_num_threads(n)
    torch.set_num_threads(n)
