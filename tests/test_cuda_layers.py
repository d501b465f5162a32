"""The CUDA engine (``fastrnn.cuda``) against torch.nn: outputs, states, every gradient.

Runs on Numba's CUDA simulator at tiny sizes (see conftest), or with
``FASTRNN_TEST_GPU=1`` on a real GPU at real sizes (``make test-gpu``).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn import cuda as fcuda

from .helpers import (
    CELLS,
    KINDS,
    Backend,
    assert_grad,
    check_grads,
    flat_state,
    make_pair,
    tolerance,
    torch_forward,
)

pytestmark = [
    pytest.mark.skipif(not fcuda.is_available(), reason="no CUDA device and the simulator is off"),
    pytest.mark.usefixtures("fast_simulator"),
]

REAL_GPU = not fcuda.is_simulator()
SIZES = Backend("cuda").sizes


def _dev(a):
    from numba import cuda

    if a is None:
        return None
    if isinstance(a, tuple):
        return tuple(_dev(b) for b in a)
    return cuda.to_device(np.ascontiguousarray(a))


def _host(a):
    if isinstance(a, tuple):
        return tuple(_host(b) for b in a)
    return a.copy_to_host()


def check_device_grads(kind, dtype, rng, sizes=SIZES, **opts):
    """``check_grads`` with every array on the device, at this machine's sizes."""
    T, B, I, H = sizes
    return check_grads(kind, dtype, rng, T=T, B=B, I=I, H=H, backend=Backend("cuda"), **opts)


@pytest.fixture
def three_block_grid(monkeypatch):
    """Every recurrence runs phase by phase on a three-block grid."""
    from fastrnn.cuda import recurrence

    real = recurrence.Plan.__init__

    def three_blocks(self, H, P, G, itemsize, blocks=None, persistent=None):
        real(self, H, P, G, itemsize, blocks=3, persistent=False)

    monkeypatch.setattr(recurrence.Plan, "__init__", three_blocks)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_phased_launches_on_several_blocks_match_torch(kind, rng, three_block_grid):
    """The per-phase driver on a multi-block grid (what the simulator cannot run
    cooperatively): unit slices, partial last slices, the k-split sums."""
    check_device_grads(
        kind, "float64", rng, bidirectional=True, with_lengths=True, sizes=(3, 2, 3, 5)
    )


@pytest.mark.skipif(
    REAL_GPU, reason="the simulator reads PRE_CAP at run time; a GPU kernel has it compiled in"
)
@pytest.mark.parametrize("kind", ["lstm_proj", "gru"])
def test_batch_chunks_match_torch(kind, rng, monkeypatch, three_block_grid):
    """Batches larger than a block's pre-activation buffer are done in chunks."""
    from fastrnn.cuda import recurrence

    monkeypatch.setattr(recurrence, "PRE_CAP", 8)
    check_device_grads(kind, "float64", rng, with_lengths=True, sizes=(3, 5, 3, 5))


@pytest.mark.parametrize("kind", ["lstm_proj", "gru"])
def test_weights_read_from_global_memory_match_torch(kind, rng, monkeypatch):
    """Slices too big for shared memory are read from global memory instead."""
    from fastrnn.cuda import recurrence

    monkeypatch.setattr(recurrence, "SHARED_WEIGHT_BYTES", 0)
    check_device_grads(kind, "float32", rng, with_lengths=True)


def test_dropout_masks_on_device_equal_cpu(rng):
    m = fastrnn.GRU(3, 4, num_layers=3, dropout=0.5, dtype="float64", seed=0)
    x = rng.standard_normal((4, 2, 3))
    keep = [rng.random((4, 2, 4)) >= 0.5 for _ in range(2)]
    y, _, tape = m.forward_train(x, dropout_masks=keep)
    yd, _, taped = m.forward_train(_dev(x), dropout_masks=[_dev(k) for k in keep])
    np.testing.assert_allclose(_host(yd), y, atol=1e-12)
    gy = rng.standard_normal(y.shape)
    g, gd = m.backward(tape, gy), m.backward(taped, _dev(gy))
    np.testing.assert_allclose(_host(gd.input), g.input, atol=1e-12)
    for name in g.params:
        np.testing.assert_allclose(_host(gd.params[name]), g.params[name], atol=1e-12)


class HostInterface:
    """An object exposing only ``__cuda_array_interface__`` (over host memory, which is
    what the simulator calls device memory): like a CuPy array or a torch CUDA tensor."""

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype
        self.__cuda_array_interface__ = {
            "shape": array.shape,
            "typestr": array.dtype.str,
            "strides": None,
            "data": (array.ctypes.data, False),
            "version": 3,
        }


@pytest.mark.skipif(REAL_GPU, reason="host memory stands for device memory only in the simulator")
def test_cuda_array_interface_objects_are_used_without_copies(rng):
    m, tm = make_pair("lstm", 3, 4, "float64")
    x = rng.standard_normal((4, 2, 3))
    y, _ = m(HostInterface(x))
    ty, _ = tm(torch.from_numpy(x))
    np.testing.assert_allclose(_host(y), ty.detach().numpy(), atol=tolerance("float64"))
    view = fcuda.as_device_array(HostInterface(x))
    x[0, 0, 0] = 42.0  # the device array sees the owner's memory
    assert _host(view)[0, 0, 0] == 42.0


def test_resident_weights_follow_load_state_dict(rng):
    m, _ = make_pair("gru", 3, 4, "float32")
    with pytest.raises(RuntimeError, match=r"call to_device\(\) first"):
        m.device_state_dict()
    m.to_device()
    assert list(m.device_state_dict()) == list(m.state_dict())
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(_host(m(_dev(x))[0]), m(x)[0], atol=tolerance("float32"))
    other = torch.nn.GRU(3, 4)
    m.load_state_dict(other.state_dict())
    expected = other(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(_host(m(_dev(x))[0]), expected, atol=tolerance("float32"))


def test_large_inputs_saturate_on_device():
    m = fastrnn.LSTM(3, 4, dtype="float32", seed=0)
    x = np.full((3, 2, 3), 1e30, np.float32)
    y, _ = m(_dev(x))
    assert np.all(np.isfinite(_host(y))) and np.all(np.abs(_host(y)) <= 1)
    np.testing.assert_allclose(_host(y), m(x)[0], atol=1e-6)


def test_device_input_errors_name_the_argument(rng):
    m = fastrnn.LSTM(3, 4, dtype="float32")
    with pytest.raises(TypeError, match="input must have dtype float32.*got float64"):
        m(_dev(rng.standard_normal((4, 2, 3))))
    with pytest.raises(ValueError, match=r"input must have shape \(seq_len, batch, 3\)"):
        m(_dev(rng.standard_normal((4, 2, 5)).astype(np.float32)))
    x = _dev(rng.standard_normal((4, 2, 3)).astype(np.float32))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 2, 4\)"):
        m(x, (_dev(np.zeros((1, 3, 4), np.float32)), _dev(np.zeros((1, 2, 4), np.float32))))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, seq_len=4\]"):
        m(x, lengths=[5, 1])


def test_import_fastrnn_does_not_import_numba_cuda():
    code = "import sys, fastrnn; fastrnn.cuda.is_simulator(); print('numba.cuda' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_device_cells_match_torch(kind, dtype, rng):
    _, B, I, H = SIZES
    cell, tcell = make_pair(kind, I, H, dtype, table=CELLS)
    x = rng.standard_normal((B, I)).astype(dtype)
    lstm = kind == "lstm"
    hx = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(2 if lstm else 1))
    xt = torch.from_numpy(x).requires_grad_()
    hxt = tuple(torch.from_numpy(h).requires_grad_() for h in hx)
    out_t = tcell(xt, hxt if lstm else hxt[0])
    out_t = out_t if lstm else (out_t,)
    gouts = [rng.standard_normal((B, H)).astype(dtype) for _ in out_t]
    sum((o * torch.from_numpy(g)).sum() for o, g in zip(out_t, gouts)).backward()
    hx_dev = _dev(hx) if lstm else _dev(hx[0])
    out = cell(_dev(x), hx_dev)
    trained = cell.forward_train(_dev(x), hx_dev)
    for a, b in zip(flat_state(out), out_t):
        assert_grad(_host(a), b, dtype, "output")
    if lstm:
        gx, gh, params = cell.backward(trained[2], _dev(gouts[0]), _dev(gouts[1]))
    else:
        gx, gh, params = cell.backward(trained[1], _dev(gouts[0]))
    assert_grad(_host(gx), xt.grad, dtype, "input")
    for a, b in zip(flat_state(_host(gh) if lstm else (_host(gh),)), hxt):
        assert_grad(a, b.grad, dtype, "hx")
    for name, p in tcell.named_parameters():
        assert_grad(_host(params[name]), p.grad, dtype, name)
    cell.to_device()
    assert set(cell.device_state_dict()) == set(cell.state_dict())
    for a, b in zip(flat_state(cell(_dev(x), hx_dev)), out_t):
        assert_grad(_host(a), b, dtype, "output with resident weights")


def test_step_refuses_device_arrays_clearly(rng):
    m = fastrnn.GRU(3, 4)
    with pytest.raises(TypeError, match="x_t is a device array; step.. streams on the CPU"):
        m.step(_dev(rng.standard_normal((2, 3)).astype(np.float32)))


def test_without_numba_cuda_the_cpu_engine_is_unaffected():
    """``numba-cuda`` missing: ``is_available()`` is False, and import and CPU use work."""
    code = (
        "import sys; sys.modules['numba.cuda'] = None\n"
        "import numpy as np, fastrnn\n"
        "assert not fastrnn.cuda.is_available()\n"
        "y, _ = fastrnn.LSTM(3, 4, seed=0)(np.ones((2, 1, 3), np.float32))\n"
        "print(y.shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(2, 1, 4)"


def test_strided_device_input_and_device_lengths(rng):
    """A non-contiguous device view and lengths given as a device array."""
    m, tm = make_pair("lstm", 3, 4, "float64", bidirectional=True)
    x = rng.standard_normal((8, 2, 3))
    lengths = np.array([4, 2])
    view = _dev(x)[::2]  # every other step: a strided device view
    y, (h, c) = m(view, lengths=_dev(lengths))
    ty, (th, tc) = torch_forward(tm, np.ascontiguousarray(x[::2]), None, lengths, False)
    assert_grad(_host(y), ty, "float64", "output")
    assert_grad(_host(h), th, "float64", "h_n")
    assert_grad(_host(c), tc, "float64", "c_n")


def test_asking_for_cuda_without_a_gpu_names_what_and_how_to_check():
    """Without a GPU (and without the simulator) fastrnn's own error, never numba's."""
    code = (
        "import fastrnn, fastrnn.cuda as fc\n"
        "for ask in (lambda: fastrnn.LSTM(3, 4).to_device(), lambda: fastrnn.GRUCell(3, 4)"
        ".to_device(), lambda: fc.to_device(__import__('numpy').zeros(3))):\n"
        "    try:\n"
        "        ask()\n"
        "    except fc.CudaUnavailableError as exc:\n"
        "        print(exc)\n"
    )
    if fastrnn.cuda.is_simulator() and os.environ.get("FASTRNN_TEST_GPU", "0") not in ("", "0"):
        pytest.skip("a GPU is present")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    if out.returncode == 0 and not out.stdout:
        pytest.skip("a GPU is present")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split(" needs")[0] for line in lines] == [
        "LSTM.to_device()",
        "GRUCell.to_device()",
        "fastrnn.cuda.to_device()",
    ]
    assert all("fastrnn.cuda.is_available()" in line for line in lines)
