"""fastrnn's recurrent kernels as PyTorch custom operators with autograd.

Two operators, registered with ``torch.library.custom_op`` so that
``torch.compile`` sees them as single graph nodes (fake implementations give
it the output shapes):

* ``fastrnn::rnn(x, weights, h0, c0, lengths, masks, config, train)``
  -> ``(y, h_n, c_n, tape)``: the forward of a whole multi-layer model in
  time-major layout. With ``train`` it also returns the tape (activated gates,
  incoming states, layer inputs) as tensors, which autograd saves.
* ``fastrnn::rnn_backward(...)``: BPTT from that tape.

Tensors are handed to the NumPy kernels with ``Tensor.numpy()`` and the
results come back with ``torch.from_numpy``: no copies of the inputs, the
weights or the outputs. CUDA tensors take ``fastrnn.cuda``'s kernels instead
(``_cuda.py``), with the same tape layout. ``config`` is a JSON string with the model's
constructor arguments; it selects a cached :class:`fastrnn.engine.Spec`, and the weights
go to :func:`fastrnn.engine.forward` / :func:`~fastrnn.engine.backward` as views.
"""

import functools
import json

import numpy as np
import torch

from fastrnn import engine, linalg, threads
from fastrnn.linalg import numpy_gemm, use_gemm

from . import _cuda, _twice


@functools.cache
def _config(config):
    return json.loads(config)


def _onednn_linear():
    """torch's oneDNN fp32 linear on dense tensors, if this build has it."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        probe = torch.ones(2, 2)
        op(probe, probe, None, "none", [], "")
    except (AttributeError, RuntimeError):
        return None
    return op


_LINEAR = _onednn_linear() if torch.backends.mkldnn.is_available() else None
#: Below this many multiply-adds oneDNN's per-call cost (~15 us) outweighs its speed.
_ONEDNN_MIN_MACS = 1 << 20


def torch_gemm(a, b, out=None):
    """``a @ b`` for NumPy arrays computed by torch (its BLAS, its thread pool).

    float32 products go to oneDNN's GEMM, which uses AVX-512 on AMD CPUs where MKL and
    OpenBLAS may stay on AVX2 (about 2x the throughput on a Zen 4, measured in
    ``asv_bench``); float64 uses ``torch.matmul``. See :func:`cpu_gemm` for when the
    bridge uses it.
    """
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    w = tb.mT
    # oneDNN wants both operands row-major; copying pays off only for large products.
    copies = (not ta.is_contiguous()) + (not w.is_contiguous())
    if (
        _LINEAR is not None
        and ta.dtype == torch.float32
        and ta.dim() == 2
        and ta.shape[0] * ta.shape[1] * tb.shape[1] >= _ONEDNN_MIN_MACS
        and (not copies or ta.shape[0] >= 256)
    ):
        result = _LINEAR(
            ta if ta.is_contiguous() else ta.contiguous(),
            w if w.is_contiguous() else w.contiguous(),
            None,
            "none",
            [],
            "",
        )
        if out is None:
            return result.numpy()
        torch.from_numpy(out).copy_(result)
        return out
    if out is None:
        return torch.matmul(ta, tb).numpy()
    torch.matmul(ta, tb, out=torch.from_numpy(out))
    return out


@functools.lru_cache(maxsize=1)
def cpu_gemm():
    """The product the bridge's recurrences use on the CPU: the core's product
    (:func:`fastrnn.linalg.numpy_gemm`: single-threaded pieces on fastrnn's threads, so
    no second pool spins beside torch's) where it runs on fastrnn's own panels or on a
    BLAS with the CPU's widest vectors; torch's oneDNN (:func:`torch_gemm`) on a CPU with
    AVX-512 that neither does.

    Measured: on an AMD Zen 4 oneDNN's AVX-512 GEMM was about 2x OpenBLAS's AVX2; on a
    Zen 5 fastrnn's AVX-512 panels were 1.1-1.4x oneDNN (``linalg.panels_chosen``); on
    this project's AVX2-only Zen 3 VM OpenBLAS is 1.2x faster than oneDNN, and a training
    step of a batch-32 GRU through the bridge went from 0.89x torch.nn's speed to 1.26x.
    """
    if linalg.panels_chosen():
        return numpy_gemm
    if _has_avx512() and not threads.blas_core().startswith(linalg.AVX512_BLAS):
        return torch_gemm
    return numpy_gemm


#: Multiply-adds from which :func:`mm` uses fastrnn's panels: below, torch's small
#: products cost less than the views and the pack (Zen 5, one core, (M, 256) x (256, 256):
#: M=32 torch 44 us, panels 49; M=64 83 vs 67; M=256 309 vs 170).
MM_PANELS_MIN = 1 << 22


def mm(a, b, bias=None):
    """``a @ b`` of 2-D CPU float tensors where no graph is recorded (inside an
    ``autograd.Function``'s forward or backward): the core's product on NumPy views of
    their memory, on one thread, where that runs on fastrnn's panels
    (``linalg.panels_chosen``: a (1024, 256) x (256, 256) product 0.55 ms against
    torch's 1.24 on a Zen 5 core) and torch computes on one thread; else torch's (on
    more threads torch's BLAS splits the product across its own). ``bias`` (N,) is
    added to every row."""
    if (
        a.shape[0] * a.shape[1] * b.shape[-1] >= MM_PANELS_MIN
        and torch.get_num_threads() == 1
        and a.dtype == b.dtype
        and a.dtype in (torch.float32, torch.float64)
        and a.dim() == b.dim() == 2
        and a.device.type == b.device.type == "cpu"
        and linalg.panels_chosen()
        and not _under_transform((a, b))
    ):
        out = a.new_empty((a.shape[0], b.shape[1]))
        with threads.following(1):
            numpy_gemm(a.detach().numpy(), b.detach().numpy(), out=out.numpy())
        if bias is not None:
            out += bias
        return out
    return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)


def _has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def _with_cpu_gemm(fn):
    """Run ``fn`` with the core's large products on :func:`cpu_gemm` (``use_gemm``) and
    on torch's thread count unless ``fastrnn.set_num_threads`` (or
    ``FASTRNN_NUM_THREADS``) chose fastrnn's; importing the bridge changes nothing in
    fastrnn."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with use_gemm(cpu_gemm()), threads.following(torch.get_num_threads()):
            return fn(*args, **kwargs)

    return wrapper


@functools.lru_cache(maxsize=64)
def spec_for(config):
    """The engine's :class:`~fastrnn.engine.Spec` of a configuration."""
    cfg = _config(config)
    return engine.Spec(
        cfg["mode"],
        cfg["input_size"],
        cfg["hidden_size"],
        cfg["num_layers"],
        cfg["bias"],
        cfg["bidirectional"],
        cfg.get("proj_size", 0),
        cfg.get("nonlinearity", "tanh"),
        cfg["dropout"],
        np.dtype(cfg["dtype"]),
    )


@functools.lru_cache(maxsize=64)
def param_shapes(config):
    return spec_for(config).param_shapes()


def _params(config, weights):
    """torch's names to NumPy views of the weight tensors' memory."""
    return {n: w.detach().numpy() for n, w in zip(param_shapes(config), weights)}


def check_weights(config, weights):
    """torch.nn's RuntimeError for a parameter of the wrong shape (a user can assign any
    Parameter): the kernels index with the configured shapes, never past the memory."""
    shapes = param_shapes(config)
    if len(weights) != len(shapes):
        raise RuntimeError(f"expected {len(shapes)} weights, got {len(weights)}")
    for (name, want), w in zip(shapes.items(), weights):
        if tuple(w.shape) != want:
            raise RuntimeError(
                f"{name} must have shape {want} for this module's configuration; "
                f"got {tuple(w.shape)}"
            )


def _cell_state(spec, c, B, dtype):
    """A NumPy copy of LSTM's cell-state tensor ``c`` (the engine updates it in place);
    an empty (L·D, B, 0) array for GRU and RNN, which have none."""
    if spec.has_cell_state:
        return c.detach().numpy().copy()
    return np.empty((spec.num_layers * spec.num_directions, B, 0), dtype)


@_with_cpu_gemm
def forward_impl(x, weights, h0, c0, lengths, masks, config, train):
    """The forward on tensors: ``(y, h_n, c_n, tape)``; ``tape`` is [] unless ``train``."""
    check_weights(config, weights)
    spec = spec_for(config)
    if _cuda.on_gpu(x):
        return _cuda.forward(spec, x, weights, h0, c0, lengths, masks, train)
    xa = x.detach().numpy()
    B = xa.shape[1]
    h = h0.detach().numpy().copy()
    c = _cell_state(spec, c0, B, xa.dtype)
    scaled = engine.scaled_masks(spec, [k.detach().numpy() for k in masks])
    y, _, tape = engine.forward(
        spec, _params(config, weights), xa, (h, c), lengths.numpy(), train=train,
        dropout_masks=scaled,
    )  # fmt: skip
    flat = [torch.from_numpy(a) for a in tape.to_flat()] if train else []
    cn = torch.from_numpy(c) if spec.has_cell_state else x.new_empty((0,))
    return torch.from_numpy(y), torch.from_numpy(h), cn, flat


@_with_cpu_gemm
def backward_impl(
    grad_y, grad_hn, grad_cn, x, weights, lengths, masks, tape, config, input_grad, param_grads
):
    """BPTT on tensors: ``(grad_x, grad_h0, grad_c0, grad_weights)``. ``param_grads`` has
    one flag per weight; a weight not asked for costs no product (its gradient is
    zeros), and with none asked for the list is empty; ``grad_x`` is (0,) unless
    ``input_grad``."""
    spec = spec_for(config)
    if _cuda.on_gpu(x):
        return _cuda.backward(
            spec, grad_y, grad_hn, grad_cn, x, weights, lengths, masks, tape, input_grad,
            param_grads,
        )  # fmt: skip
    xa = x.detach().numpy()
    B = xa.shape[1]
    t = engine.Tape.from_flat(
        [a.detach().numpy() for a in tape],
        xa,
        lengths.numpy(),
        engine.scaled_masks(spec, [k.numpy() for k in masks]),
        spec.num_layers * spec.num_directions,
    )
    dh = grad_hn.detach().numpy().copy()
    dc = _cell_state(spec, grad_cn, B, xa.dtype)
    names = list(param_shapes(config))
    wanted = [n for n, need in zip(names, param_grads) if need]
    grads = engine.backward(
        spec, _params(config, weights), t, grad_y.detach().numpy(), (dh, dc),
        input_grad=input_grad, param_grads=wanted,
    )  # fmt: skip
    gx = torch.from_numpy(grads.input) if input_grad else x.new_empty((0,))
    gc = torch.from_numpy(dc) if spec.has_cell_state else x.new_empty((0,))
    gw = [torch.from_numpy(grads.params[n]) for n in names] if wanted else []
    return gx, torch.from_numpy(dh), gc, gw


def _grad_or_zeros(grad, like_shape, x):
    return x.new_zeros(like_shape) if grad is None else grad.contiguous()


# ------------------------------------------------------------------ eager: autograd.Function


def _batched(*tensors):
    """Whether a gradient comes batched by ``vmap`` (``is_grads_batched=True``)."""
    batched, legacy = (
        torch._C._functorch.is_batchedtensor,
        torch._C._functorch.is_legacy_batchedtensor,
    )
    for t in tensors:  # (a loop, not any(): called per cell step)
        if t is not None and (batched(t) or legacy(t)):
            return True
    return False


class RNNFunction(torch.autograd.Function):
    """Eager-mode autograd node: the same computation as the custom op, with less
    dispatch overhead (custom ops cost tens of microseconds per call in eager mode,
    which matters for cells stepped in a Python loop)."""

    @staticmethod
    def forward(ctx, config, n_weights, x, h0, c0, lengths, *weights_and_masks):
        output = _forward_train(config, n_weights, x, h0, c0, lengths, weights_and_masks)
        _save(ctx, (config, n_weights, x, h0, c0, lengths, *weights_and_masks), output)
        return output

    @staticmethod
    def backward(ctx, grad_y, grad_hn, grad_cn, *grad_tape):
        if torch.is_grad_enabled() or _batched(grad_y, grad_hn, grad_cn):
            # create_graph=True (gradients that are differentiable) or is_grads_batched
            # (vmap over the backward): torch ops, which autograd and vmap can transform
            return RNNFunction._backward_twice(ctx, grad_y, grad_hn, grad_cn)
        with torch.no_grad():
            return RNNFunction._backward(ctx, grad_y, grad_hn, grad_cn)

    @staticmethod
    def _backward_twice(ctx, grad_y, grad_hn, grad_cn):
        """The same gradients, computed with torch.nn's operators so that autograd can
        differentiate them again (slower; only when a graph of the backward is asked)."""
        config, nw, nm, h_shape, c_shape = ctx.meta
        saved = ctx.saved_tensors
        x, lengths = saved[0], saved[1]
        weights = list(saved[2 : 2 + nw])
        masks = list(saved[2 + nw : 2 + nw + nm])
        h0, c0 = ctx.initial
        y_shape = (x.shape[0], x.shape[1], _y_width(config))
        needs = ctx.needs_input_grad  # (config, n_weights, x, h0, c0, lengths, *weights, ...)
        lstm = spec_for(config).has_cell_state
        grads = _twice.gradients(
            config,
            x,
            h0,
            c0,
            weights,
            lengths,
            masks,
            _grad_or_zeros(grad_y, y_shape, x),
            _grad_or_zeros(grad_hn, h_shape, x),
            _grad_or_zeros(grad_cn, c_shape, x) if lstm else None,
            [needs[2], needs[3], needs[4] and lstm, *needs[6 : 6 + nw]],
        )
        gx, gh, gc, gw = grads[0], grads[1], grads[2], grads[3:]
        return (None, None, gx, gh, gc, None, *gw, *([None] * nm))

    @staticmethod
    def _backward(ctx, grad_y, grad_hn, grad_cn):
        config, nw, nm, h_shape, c_shape = ctx.meta
        saved = ctx.saved_tensors
        x, lengths = saved[0], saved[1]
        weights = list(saved[2 : 2 + nw])
        masks = list(saved[2 + nw : 2 + nw + nm])
        tape = list(saved[2 + nw + nm :])
        needs = ctx.needs_input_grad  # (config, n_weights, x, h0, c0, lengths, *weights, ...)
        input_grad, weight_needs = needs[2], needs[6 : 6 + nw]
        y_shape = tape[1].shape[:2] + (_y_width(config),)
        gx, gh, gc, gw = backward_impl(
            _grad_or_zeros(grad_y, y_shape, x),
            _grad_or_zeros(grad_hn, h_shape, x),
            _grad_or_zeros(grad_cn, c_shape, x),
            x,
            weights,
            lengths,
            masks,
            tape,
            config,
            input_grad,
            list(weight_needs),
        )
        gw = [g if need else None for g, need in zip(gw, weight_needs)] if gw else [None] * nw
        lstm = spec_for(config).has_cell_state
        return (
            None,
            None,
            gx if input_grad else None,
            gh,
            gc if lstm else None,
            None,
            *gw,
            *([None] * nm),
        )


def _forward_train(config, n_weights, x, h0, c0, lengths, weights_and_masks):
    weights = list(weights_and_masks[:n_weights])
    masks = list(weights_and_masks[n_weights:])
    y, hn, cn, tape = forward_impl(x, weights, h0, c0, lengths, masks, config, True)
    return (y, hn, cn, *tape)


def _save(ctx, inputs, output):
    """What the backward needs (shared by both autograd functions)."""
    config, n_weights, x, h0, c0, lengths, *weights_and_masks = inputs
    weights, masks = weights_and_masks[:n_weights], weights_and_masks[n_weights:]
    _, hn, cn, *tape = output
    ctx.save_for_backward(x, lengths, *weights, *masks, *tape)
    ctx.initial = (h0, c0)  # for gradients of gradients only (see _twice.py)
    ctx.meta = (config, n_weights, len(masks), tuple(hn.shape), tuple(cn.shape))
    ctx.mark_non_differentiable(*tape)
    # Gradients of outputs the loss does not reach arrive as None, not as zeros: torch
    # would otherwise fill a tape-sized zero tensor per output (10 MB for a batch-32
    # LSTM at T=50) on its OpenMP threads, which then spin on the cores the backward's
    # pieces run on (a 2-thread training step: 72 ms with them, 52 ms without).
    ctx.set_materialize_grads(False)


class RNNTransformFunction(RNNFunction):
    """:class:`RNNFunction` in the form ``torch.func`` transforms need (a separate
    ``setup_context``, a ``vmap`` rule). Used only for tensors under such a transform:
    torch binds the arguments of this form with ``inspect.signature`` at every call,
    which would double the per-call cost of a cell stepped in a loop."""

    @staticmethod
    def forward(config, n_weights, x, h0, c0, lengths, *weights_and_masks):
        return _forward_train(config, n_weights, x, h0, c0, lengths, weights_and_masks)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs, output)

    @staticmethod
    def vmap(info, in_dims, config, n_weights, x, h0, c0, lengths, *weights_and_masks):
        """``torch.func.vmap``: one call per batch entry, results stacked."""
        args = (x, h0, c0, lengths, *weights_and_masks)
        dims = in_dims[2:]
        outs = [
            RNNTransformFunction.apply(
                config, n_weights, *(a if d is None else a.select(d, i) for a, d in zip(args, dims))
            )
            for i in range(info.batch_size)
        ]
        stacked = tuple(torch.stack(parts) for parts in zip(*outs))
        return stacked, (0,) * len(stacked)


def cpp_apply(function):
    """``function.apply`` (an ``autograd.Function``) without its Python prologue, which
    binds arguments for functorch and unwraps dead functorch wrappers (3-4 us of a call
    here): torch's own C++ ``apply``, for callers that run only while no functorch
    transform is active."""
    return super(torch.autograd.Function, function).apply


def needs_grad(tensors):
    """Whether autograd records a call on ``tensors`` (None entries skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def address(t):
    """``t.data_ptr()``, 0 for None: how the address kernels take an absent array."""
    return 0 if t is None else t.data_ptr()


def _under_transform(tensors):
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(wrapped(t) for t in tensors)


def graph_capture():
    """torch.compile / jit.trace at work: they need the custom operator."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def rnn(x, weights, h0, c0, lengths, masks, config, train):
    """Run the model: the custom op under ``torch.compile``, else the cheaper eager path."""
    if graph_capture():
        from ._compiled import rnn_op

        return rnn_op(x, weights, h0, c0, lengths, masks, config, train)
    if not train:
        with torch.no_grad():
            return forward_impl(x, weights, h0, c0, lengths, masks, config, False)
    function = RNNTransformFunction if _under_transform((x, h0, c0, *weights)) else RNNFunction
    out = function.apply(config, len(weights), x, h0, c0, lengths, *weights, *masks)
    return out[0], out[1], out[2], list(out[3:])


def _y_width(config):
    spec = spec_for(config)
    return spec.num_directions * spec.output_size
