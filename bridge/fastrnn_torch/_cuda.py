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
from fastrnn.training import Tape


def on_gpu(x):
    """Whether ``x`` should run on fastrnn's CUDA kernels (tests under the simulator
    replace this to send CPU tensors there)."""
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


def _scaled_masks(core, masks, x):
    """Inter-layer dropout keep-masks scaled like the core's (inverted dropout)."""
    scale = 0.0 if core.dropout == 1 else 1.0 / (1.0 - core.dropout)
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
    from fastrnn.cuda import _device, linalg

    def alloc(shape, dtype):
        t = torch.empty(shape, dtype=_TORCH_DTYPE[dtype.name], device=x.device)
        return device_array(t)

    if fastrnn.cuda.is_simulator():
        with _device.using(0, alloc):
            yield
        return
    from numba import cuda

    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    # torch and Numba both work on the tensor's GPU (through its primary context), so
    # the products' device="cuda" and Numba's allocations land there
    with torch.cuda.device(index), cuda.gpus[index]:
        stream = cuda.external_stream(torch.cuda.current_stream(x.device).cuda_stream)
        with _device.using(stream, alloc), linalg.use_gemm(_cublas_gemm):
            yield


_TORCH_DTYPE = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
    "bool": torch.bool,
}


def forward(core, x, weights, h0, c0, lengths, masks, train):
    """The bridge's forward on CUDA tensors: ``(y, h_n, c_n, tape tensors)``."""
    from fastrnn.cuda import layers

    mode = core.mode
    L, D = core.num_layers, core.num_directions
    B = x.shape[1]
    with context(x):
        params = {n: device_array(w) for n, w in zip(core._params, weights)}
        hn = h0.detach().clone()
        cn = c0.detach().clone() if mode == "LSTM" else x.new_zeros((L * D, B, core.hidden_size))
        lens = lengths.to(device=x.device, dtype=torch.int64).contiguous()
        scaled = _scaled_masks(core, masks, x)
        tape = Tape(id(core), None, None, False, None, device=device_array(lens))
        tape.masks = scaled
        y = layers.run(
            core,
            params,
            device_array(x),
            device_array(hn),
            device_array(cn),
            tape.device,
            tape if train else None,
            scaled,
        )
        flat = []
        if train:
            flat = [as_tensor(a, x) for step in tape.steps for a in step]
            flat += [as_tensor(a, x) for a in tape.layer_inputs[1:]]
        return as_tensor(y, x), hn, cn if mode == "LSTM" else x.new_empty((0,)), flat


def backward(
    core, grad_y, grad_hn, grad_cn, x, weights, lengths, masks, tape, input_grad, param_grads
):
    """BPTT on CUDA tensors: ``(grad_x, grad_h0, grad_c0, grad_weights)`` (as ``_ops``)."""
    from fastrnn.cuda import layers

    L, D = core.num_layers, core.num_directions
    lstm = core.mode == "LSTM"
    with context(x):
        params = {n: device_array(w) for n, w in zip(core._params, weights)}
        lens = lengths.to(device=x.device, dtype=torch.int64).contiguous()
        t = Tape(id(core), None, None, False, None, device=device_array(lens))
        arrays = [device_array(a) for a in tape]
        t.steps = [tuple(arrays[3 * k : 3 * k + 3]) for k in range(L * D)]
        t.layer_inputs = [device_array(x)] + arrays[3 * L * D :]
        t.masks = _scaled_masks(core, masks, x)
        dh = grad_hn.detach().clone()
        dc = (
            grad_cn.detach().clone() if lstm else x.new_zeros((L * D, x.shape[1], core.hidden_size))
        )
        wanted = [n for n, need in zip(core._params, param_grads) if need]
        gx, params = layers.run_backward(
            core,
            params,
            t,
            device_array(grad_y.contiguous()),
            device_array(dh),
            device_array(dc),
            input_grad,
            wanted,
        )
        gx = as_tensor(gx, x) if input_grad else x.new_empty((0,))
        gw = [as_tensor(params[n], x) for n in core._params] if wanted else []
        return gx, dh, dc if lstm else x.new_empty((0,)), gw
