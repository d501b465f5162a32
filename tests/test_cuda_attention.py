"""fastrnn.cuda's attention against torch: the torch comparisons of test_attention.py,
run again with every array on the device.

The tests are imported from ``test_attention`` (pytest collects them here with
their parameters); an autouse fixture swaps that module's ``attention`` for a
proxy that copies inputs to the device and results back, so each call takes the
GPU path of ``fastrnn.attention`` (simulator or real GPU).
"""

import numpy as np
import pytest
import test_attention
from test_attention import (  # noqa: F401  (collected here, run on the device)
    test_additive_matches_torch,
    test_bad_input_is_reported,
    test_concat_attn_matches_tutorial,
    test_large_inputs_do_not_overflow,
    test_luong_matches_torch,
    test_scaled_dot_product_matches_torch,
)

import fastrnn
from fastrnn import attention

pytestmark = pytest.mark.skipif(
    not fastrnn.cuda.is_available(), reason="no CUDA device and the simulator is off"
)


def _to_device(a):
    from numba import cuda

    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))
    if isinstance(a, (tuple, list)):
        return type(a)(_to_device(b) for b in a)
    return a


def _to_host(a):
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    if isinstance(a, (tuple, list)):
        return type(a)(_to_host(b) for b in a)
    if isinstance(a, dict):
        return {k: _to_host(v) for k, v in a.items()}
    return a


class _OnDevice:
    """``fastrnn.attention`` with device inputs and host results."""

    def __getattr__(self, name):
        fn = getattr(attention, name)

        def call(*args, **kwargs):
            out = fn(*_to_device(list(args)), **{k: _to_device(v) for k, v in kwargs.items()})
            calls.append(name)
            return _to_host(out)

        return call


calls = []


@pytest.fixture(autouse=True)
def on_device(monkeypatch, fast_simulator):
    monkeypatch.setattr(test_attention, "attention", _OnDevice())


def test_device_inputs_take_the_gpu_path(rng):
    from numba import cuda

    q = cuda.to_device(rng.standard_normal((2, 3, 4)))
    out, tape = attention.scaled_dot_product_train(q, q, q)
    assert fastrnn.cuda.is_device_array(out) and tape.saved["device"]
    grads = attention.scaled_dot_product_backward(tape, cuda.to_device(np.ones((2, 3, 4))))
    assert all(fastrnn.cuda.is_device_array(g) for g in grads)
    with pytest.raises(ValueError, match="same leading dimensions"):
        attention.scaled_dot_product(q, cuda.to_device(rng.standard_normal((1, 3, 4))), q)
    with pytest.raises(TypeError, match="key must have dtype float64 .like query."):
        attention.scaled_dot_product(q, cuda.to_device(np.zeros((2, 3, 4), np.float32)), q)
