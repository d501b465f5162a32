"""CUDA tensors through fastrnn's ``numba.cuda`` kernels, without copies.

Tensors are handed to the kernels as Numba device arrays over their own memory
(a ``__cuda_array_interface__`` built from ``data_ptr``, strides and dtype);
everything the kernels allocate comes from torch's caching allocator (fresh
tensors wrapped the same way), and all work is queued on torch's current
stream. The dense products go to torch's cuBLAS (``torch.addmm``).

Under Numba's CUDA simulator the same code runs on CPU tensors, whose
``data_ptr`` is what the simulator calls device memory: that is how the test
suite exercises this path on machines without a GPU (it makes
:func:`on_gpu` answer True for CPU tensors).
"""

import contextlib
import functools

import torch

import fastrnn
from fastrnn import engine


def on_gpu(x):
    """Whether ``x`` runs on fastrnn's CUDA kernels: CUDA tensors do."""
    return x.is_cuda


@functools.cache
def available():
    return fastrnn.cuda.is_available()


class _Interface:
    """``__cuda_array_interface__`` of a tensor (which it keeps alive)."""

    def __init__(self, t):
        self.tensor = t
        size = t.element_size()
        self.__cuda_array_interface__ = {
            "shape": tuple(t.shape),
            "typestr": _TYPESTR[t.dtype],
            "strides": tuple(s * size for s in t.stride()),
            "version": 3,
            "data": (t.data_ptr(), False),
        }


_TYPESTR = {
    torch.float32: "<f4",
    torch.float64: "<f8",
    torch.int64: "<i8",
    torch.bool: "|b1",
    torch.uint8: "|u1",
}


def device_array(t):
    """A Numba device array over tensor ``t``'s memory (detached; no copy)."""
    if t.numel() == 0:  # no memory to share (and torch's data_ptr is then 0)
        from numba import cuda

        return cuda.device_array(tuple(t.shape), str(t.dtype).replace("torch.", ""))
    return fastrnn.cuda.as_device_array(_Interface(t.detach()))


def _scaled_masks(spec, masks, x):
    """Inter-layer dropout keep-masks scaled like the core's (inverted dropout)."""
    scale = engine.mask_scale(spec)
    return [device_array(((k != 0).to(x.dtype) * scale).contiguous()) for k in masks]


def as_tensor(a, like):
    """The tensor over device array ``a``'s memory (on ``like``'s device)."""
    if fastrnn.cuda.is_simulator():
        owner = getattr(a, "_ary", a)
        return torch.from_numpy(owner)
    return torch.as_tensor(a, device=like.device)


def _cublas_gemm(a, b, c, alpha, beta, trans_a, trans_b):
    """fastrnn.cuda's product through torch (cuBLAS) on the current stream."""
    ta, tb, tc = (torch.as_tensor(v, device="cuda") for v in (a, b, c))
    ta = ta.mT if trans_a else ta
    tb = tb.mT if trans_b else tb
    if tc.dim() == 3:
        torch.baddbmm(tc, ta, tb, beta=beta, alpha=alpha, out=tc)
    else:
        torch.addmm(tc, ta, tb, beta=beta, alpha=alpha, out=tc)
    return c


@contextlib.contextmanager
def context(x):
    """fastrnn's CUDA work inside runs on torch's current stream and allocator."""
    from fastrnn.cuda import linalg

    def alloc(shape, dtype):
        t = torch.empty(shape, dtype=_TORCH_DTYPE[dtype.name], device=x.device)
        return device_array(t)

    if fastrnn.cuda.is_simulator():
        with fastrnn.cuda.using(0, alloc):
            yield
        return
    from numba import cuda

    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    # torch and Numba both work on the tensor's GPU (through its primary context), so
    # the products' device="cuda" and Numba's allocations land there
    with torch.cuda.device(index), cuda.gpus[index]:
        stream = cuda.external_stream(torch.cuda.current_stream(x.device).cuda_stream)
        with fastrnn.cuda.using(stream, alloc), linalg.use_gemm(_cublas_gemm):
            yield


_TORCH_DTYPE = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
    "bool": torch.bool,
}


def _params(spec, weights):
    return {n: device_array(w) for n, w in zip(spec.param_shapes(), weights)}


def _cell_state(spec, c, x):
    L, D, B = spec.num_layers, spec.num_directions, x.shape[1]
    return c.detach().clone() if spec.has_cell_state else x.new_zeros((L * D, B, spec.hidden_size))


def forward(spec, x, weights, h0, c0, lengths, masks, train):
    """The bridge's forward on CUDA tensors: ``(y, h_n, c_n, tape tensors)``."""
    with context(x):
        hn, cn = h0.detach().clone(), _cell_state(spec, c0, x)
        lens = lengths.to(device=x.device, dtype=torch.int64).contiguous()
        y, _, tape = engine.forward(
            spec,
            _params(spec, weights),
            device_array(x),
            (device_array(hn), device_array(cn)),
            device_array(lens),
            train=train,
            dropout_masks=_scaled_masks(spec, masks, x),
        )
        flat = [as_tensor(a, x) for a in tape.to_flat()] if train else []
        return as_tensor(y, x), hn, cn if spec.has_cell_state else x.new_empty((0,)), flat


def backward(
    spec, grad_y, grad_hn, grad_cn, x, weights, lengths, masks, tape, input_grad, param_grads
):
    """BPTT on CUDA tensors: ``(grad_x, grad_h0, grad_c0, grad_weights)`` (as ``_ops``)."""
    with context(x):
        lens = lengths.to(device=x.device, dtype=torch.int64).contiguous()
        t = engine.Tape.from_flat(
            [device_array(a) for a in tape],
            device_array(x),
            device_array(lens),
            _scaled_masks(spec, masks, x),
            spec.num_layers * spec.num_directions,
        )
        dh, dc = grad_hn.detach().clone(), _cell_state(spec, grad_cn, x)
        names = list(spec.param_shapes())
        wanted = [n for n, need in zip(names, param_grads) if need]
        grads = engine.backward(
            spec,
            _params(spec, weights),
            t,
            device_array(grad_y.contiguous()),
            (device_array(dh), device_array(dc)),
            input_grad=input_grad,
            param_grads=wanted,
        )
        gx = as_tensor(grads.input, x) if input_grad else x.new_empty((0,))
        gw = [as_tensor(grads.params[n], x) for n in names] if wanted else []
        return gx, dh, dc if spec.has_cell_state else x.new_empty((0,)), gw
