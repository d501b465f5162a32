"""Shared fixtures (helpers are in ``helpers.py``).

CUDA tests run on Numba's CUDA simulator unless ``FASTRNN_TEST_GPU=1`` (``make
test-gpu``) asks for the real device; the choice has to be made before anything
imports ``numba.cuda``, hence here.
"""

import os
import sys

if os.environ.get("FASTRNN_TEST_GPU", "0") in ("", "0"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import importlib.util  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None
if HAS_TORCH:
    import torch

    torch.set_num_threads(1)


def pytest_ignore_collect(collection_path, config):
    """The core's own run (CI installs fastrnn without torch, ``make test-core``): the
    modules that import torch or the bridge are left out, everything else must pass."""
    if HAS_TORCH or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    source = collection_path.read_text()
    uses_torch = any(
        f"{word} {name}" in source
        for word in ("import", "from")
        for name in ("torch", "fastrnn_torch")
    )
    return True if uses_torch else None


@pytest.fixture(params=["cpu", "cuda"])
def backend(request):
    """The same test body on the CPU and on CUDA (the simulator unless FASTRNN_TEST_GPU=1)."""
    from .helpers import Backend

    if request.param == "cuda":
        import fastrnn

        if not fastrnn.cuda.is_available():
            pytest.skip("no CUDA device and the simulator is off")
        request.getfixturevalue("fast_simulator")
    return Backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def fast_simulator():
    """The CUDA simulator's block manager polls its threads: a short GIL switch interval
    makes its barriers about 5x faster."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


@pytest.fixture
def cuda_launches(monkeypatch):
    """Names of the ``fastrnn.cuda`` kernels launched during the test (proof of dispatch)."""
    from fastrnn.cuda import _device

    names = []
    real = _device.launch

    def counting(kernel, *args, **kwargs):
        names.append(getattr(kernel, "__name__", repr(kernel)))
        return real(kernel, *args, **kwargs)

    monkeypatch.setattr(_device, "launch", counting)
    return names


@pytest.fixture
def four_cpus(monkeypatch):
    """Up to four threads allowed whatever this machine has (results must not depend on
    how many cores actually run them); the count is restored afterwards."""
    from fastrnn import threads

    monkeypatch.setattr(threads, "available_cpus", lambda: 4)
    monkeypatch.setitem(threads._STATE, "threads", threads.get_num_threads())
    monkeypatch.setitem(threads._STATE, "explicit", threads._STATE["explicit"])
