"""fastrnn_torch on CUDA tensors: dispatch to fastrnn.cuda's kernels, checked against torch.nn.

Under Numba's CUDA simulator (no GPU), CPU tensors are sent down the CUDA path
(``_cuda.on_gpu`` answers True): the tensors reach the kernels through a
``__cuda_array_interface__`` over their memory, exactly as CUDA tensors do on a
GPU. With ``FASTRNN_TEST_GPU=1`` on a GPU, real CUDA tensors are compared with
torch.nn on cuDNN.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fastrnn
from fastrnn_torch import _cuda

from .bridge_helpers import CELLS, LAYERS, TOL, run_both, twins

pytestmark = pytest.mark.skipif(
    not fastrnn.cuda.is_available(), reason="no CUDA device and the simulator is off"
)
SIMULATED = fastrnn.cuda.is_simulator()


@pytest.fixture
def launches(monkeypatch, cuda_launches, fast_simulator):
    """The kernels fastrnn.cuda launched; under the simulator, CPU tensors are routed to
    the CUDA path."""
    if SIMULATED:
        monkeypatch.setattr(_cuda, "on_gpu", lambda x: True)
    return cuda_launches


@pytest.mark.skipif(not SIMULATED, reason="simulator routing of CPU tensors")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layers_dispatch_to_cuda_kernels_and_match_torch(kind, dtype, launches):
    m, tm = twins(LAYERS, kind, dtype, 3, 4, num_layers=2, bidirectional=True, batch_first=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 3, generator=g, dtype=m.weight_ih_l0.dtype)
    P = 3 if kind == "lstm_proj" else 4
    h = torch.randn(4, 2, P, generator=g, dtype=x.dtype)
    if kind.startswith("lstm"):
        run_both(m, tm, [x, h, torch.randn(4, 2, 4, generator=g, dtype=x.dtype)], dtype)
    else:
        run_both(m, tm, [x, h], dtype)
    assert "forward_persistent" in launches and "backward_persistent" in launches


@pytest.mark.skipif(not SIMULATED, reason="simulator routing of CPU tensors")
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cells_dispatch_to_cuda_kernels_and_match_torch(kind, launches):
    m, tm = twins(CELLS, kind, "float64", 3, 4)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    run_both(m, tm, [x], "float64")
    assert "forward_persistent" in launches


@pytest.mark.skipif(not SIMULATED, reason="simulator routing of CPU tensors")
def test_packed_sequences_and_dropout_through_cuda(launches):
    m, tm = twins(LAYERS, "gru", "float64", 3, 4, num_layers=2, dropout=0.5)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (3, 1, 2)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    m.eval()
    tm.eval()
    out, h = m(packed)
    tout, th = tm(packed)
    assert (out.data - tout.data).abs().max() < TOL["float64"]
    assert (h - th).abs().max() < TOL["float64"]
    m.train()
    torch.manual_seed(0)
    y, _ = m(torch.randn(3, 2, 3, dtype=torch.float64, generator=g))
    y.sum().backward()  # dropout masks travel through the CUDA tape
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.skipif(SIMULATED or not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_cuda_tensors_match_cudnn(kind, launches):
    m, tm = twins(LAYERS, kind, "float32", 32, 64, num_layers=2, bidirectional=True)
    m, tm = m.cuda(), tm.cuda()
    x = torch.randn(50, 8, 32, device="cuda", requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, _ = m(x)
    ty, _ = tm(x2)
    assert (y - ty).abs().max().item() < 1e-4
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (ty * w).sum().backward()
    assert (x.grad - x2.grad).abs().max().item() < 1e-4
    for (name, p), q in zip(m.named_parameters(), tm.parameters()):
        scale = max(1.0, q.grad.abs().max().item())
        assert (p.grad - q.grad).abs().max().item() < 1e-4 * scale, name
    assert "forward_persistent" in launches


@pytest.mark.skipif(not SIMULATED, reason="simulator routing of CPU tensors")
@pytest.mark.parametrize("kind", ["gru", "lstm_proj"])
def test_compiled_graph_runs_the_cuda_path(kind, launches):
    """Under torch.compile the custom operator dispatches to the CUDA kernels too, and its
    fake implementation's tape shapes match what they record."""
    m, tm = twins(LAYERS, kind, "float64", 3, 4, bidirectional=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    y, _ = compiled(x)
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    tm(x2)[0].sum().backward()
    assert (y - tm(x)[0]).abs().max() < TOL["float64"]
    assert (x.grad - x2.grad).abs().max() < TOL["float64"]
    for p, q in zip(m.parameters(), tm.parameters()):
        assert (p.grad - q.grad).abs().max() < TOL["float64"]
    assert "forward_persistent" in launches and "backward_persistent" in launches
