"""The float32 rational tanh/sigmoid are accurate to their stated bound and saturate."""

import numba
import numpy as np

from fastrnn._jit import kernel
from fastrnn.activations import (
    EXP_F32_MAX_REL_ERROR,
    TANH_F32_MAX_ABS_ERROR,
    exp_nonpos,
    sigmoid,
    tanh,
)


@kernel
def _apply(x, out_tanh, out_sigmoid):
    for i in range(x.size):
        out_tanh[i] = tanh(x[i])
        out_sigmoid[i] = sigmoid(x[i])


def test_float32_tanh_and_sigmoid_error_bound():
    x = np.concatenate([np.linspace(-20, 20, 400_001), [1e4, -1e4, 3e38, -3e38, 0.0, 1e-30]])
    x32 = x.astype(np.float32)
    t, s = np.empty_like(x32), np.empty_like(x32)
    _apply(x32, t, s)
    exact = x32.astype(np.float64)
    assert np.all(np.isfinite(t)) and np.all(np.isfinite(s))
    assert np.max(np.abs(t - np.tanh(exact))) <= TANH_F32_MAX_ABS_ERROR
    assert np.max(np.abs(s - 0.5 * (1 + np.tanh(0.5 * exact)))) <= TANH_F32_MAX_ABS_ERROR
    assert t[-2] == 0.0 and np.all(np.abs(t) <= 1.0)


def test_float64_is_exact():
    x = np.linspace(-30, 30, 10_001)
    t, s = np.empty_like(x), np.empty_like(x)
    _apply(x, t, s)
    np.testing.assert_allclose(t, np.tanh(x), rtol=1e-15, atol=0)
    np.testing.assert_allclose(s, 0.5 * (1 + np.tanh(0.5 * x)), rtol=1e-15, atol=2e-16)
    assert numba  # kernels compiled with numba


@kernel
def _apply_exp(x, out):
    for i in range(x.size):
        out[i] = exp_nonpos(x[i])


def test_float32_exp_nonpos_error_bound():
    x = np.concatenate([-np.linspace(0, 110, 300_001), [-np.inf, -1e30, 0.0]]).astype(np.float32)
    out = np.empty_like(x)
    _apply_exp(x, out)
    exact = np.exp(x.astype(np.float64))
    normal = x >= -87
    rel = np.abs(out[normal] - exact[normal]) / exact[normal]
    assert rel.max() <= EXP_F32_MAX_REL_ERROR
    assert np.all(np.abs(out[~normal] - exact[~normal]) < 1e-37)
    assert out[-3] == 0.0 and out[-1] == 1.0
    x64 = -np.linspace(0, 700, 1001)
    out64 = np.empty_like(x64)
    _apply_exp(x64, out64)
    np.testing.assert_allclose(out64, np.exp(x64), rtol=1e-15)
