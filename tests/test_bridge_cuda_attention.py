"""fastrnn_torch attention on the CUDA path, against torch formulations.

Under Numba's CUDA simulator, CPU tensors are sent down the CUDA path (as in
``test_bridge_cuda.py``) and the module tests of ``test_bridge_attention.py``
run again, collected here; on a real GPU, CUDA tensors are compared with torch.
"""

import pytest
import torch
import torch.nn.functional as F
from test_bridge_attention import (  # noqa: F401  (collected here, run on the CUDA path)
    grads_match,
    test_additive_module,
    test_attn_module_is_the_tutorial,
    test_luong_module,
    test_sdpa_float32_and_fallback,
)

import fastrnn
import fastrnn_torch as frt
from fastrnn_torch import _cuda

SIMULATED = fastrnn.cuda.is_simulator()
pytestmark = pytest.mark.skipif(
    not SIMULATED,
    reason="simulator routing of CPU tensors; real GPUs are covered by test_sdpa_on_cuda_tensors",
)


@pytest.fixture(autouse=True)
def through_cuda(monkeypatch, cuda_launches, fast_simulator):
    monkeypatch.setattr(_cuda, "on_gpu", lambda x: True)
    yield
    assert cuda_launches, "no fastrnn.cuda kernel ran"


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"mask": "bool"}, {"mask": "float"}])
def test_sdpa_through_cuda_matches_torch(kw):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 4, 3, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 5, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 5, 2, generator=g, dtype=torch.float64)
    kw = dict(kw)
    mask = kw.pop("mask", None)
    if mask == "bool":
        kw["attn_mask"] = torch.rand(2, 2, 4, 5, generator=g) > 0.4
        kw["attn_mask"][:, :, 2] = False
    elif mask == "float":
        kw["attn_mask"] = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64)
    grads_match(
        lambda *a: frt.scaled_dot_product_attention(*a, **kw),
        lambda *a: F.scaled_dot_product_attention(*a, **kw),
        [q, k, v],
    )
