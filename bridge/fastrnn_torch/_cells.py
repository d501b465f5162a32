"""The eager CPU path of the ``*Cell`` modules: one time step, forward and backward,
with as little work per call as a Python loop over time can afford.

A cell stepped in a training loop is called thousands of times with small tensors, so
the general layer machinery (configuration, tapes, a bound core model) would cost more
than the arithmetic. Here a forward is two products and the fused gate kernel of the
cell type (``fastrnn.lstm/gru/rnn.cell_step``, the gates kept for the backward), and a
backward is the fused gate-gradient kernel (``backward_step``) plus four small products
on torch's BLAS. The same kernels as everywhere else: parity with torch.nn is tested.
"""

import numpy as np
import torch

from fastrnn import engine

from . import _twice
from ._ops import _batched, spec_for


def _np(t):
    return t.detach().numpy()


def _forward(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, keep_gates):
    """``(h1, c1, gates)`` tensors; ``gates`` (B, tape_gates*H) only with ``keep_gates``."""
    B, H = h0.shape
    G = spec.gates * H
    if B >= engine.BLAS_MIN_BATCH:
        gx = torch.mm(x.detach(), w_ih.detach().t()).numpy()
        gh = torch.mm(h0.detach(), w_hh.detach().t()).numpy()
    else:
        gx, gh = np.empty((B, G), spec.dtype), np.empty((B, G), spec.dtype)
        engine.cell_products(_np(x), _np(w_ih), _np(h0), _np(w_hh), gx, gh)
    h1 = h0.detach().clone()
    c1 = c0.detach().clone() if spec.has_cell_state else torch.empty((B, 0), dtype=x.dtype)
    gates = torch.empty((B, spec.tape_gates * H), dtype=x.dtype) if keep_gates else None
    engine.cell_forward(
        spec,
        gx,
        gh,
        None if b_ih is None else _np(b_ih),
        None if b_hh is None else _np(b_hh),
        h1.numpy(),
        c1.numpy(),
        None if gates is None else gates.numpy(),
    )
    return h1, c1, gates


class CellFunction(torch.autograd.Function):
    """One step of a cell: ``(h1, c1)`` from ``(x, h0, c0)`` and the weights."""

    @staticmethod
    def forward(ctx, config, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        spec = spec_for(config)
        h1, c1, gates = _forward(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, True)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates)
        ctx.config = config
        if not spec.has_cell_state:
            ctx.mark_non_differentiable(c1)  # an empty placeholder
        return h1, c1

    @staticmethod
    def backward(ctx, grad_h1, grad_c1):
        config = ctx.config
        spec = spec_for(config)
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates = ctx.saved_tensors
        needs = (None, None, None) + ctx.needs_input_grad[1:]  # (..., x, h0, c0, w_ih, ...)
        B, H = h0.shape
        lstm_cell = spec.has_cell_state
        if grad_h1 is None:
            grad_h1 = torch.zeros_like(h0)
        if lstm_cell and grad_c1 is None:
            grad_c1 = torch.zeros_like(c0)
        if torch.is_grad_enabled() or _batched(grad_h1, grad_c1):
            # create_graph=True or is_grads_batched: differentiable torch operators
            weights = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
            grads = _twice.gradients(
                config,
                x[None],
                h0[None],
                c0[None] if lstm_cell else c0,
                weights,
                torch.ones(B, dtype=torch.int64),
                [],
                torch.zeros(1, B, H, dtype=x.dtype),
                grad_h1[None],
                grad_c1[None] if lstm_cell else None,
                [needs[3], needs[4], needs[5] and lstm_cell, *needs[6 : 6 + len(weights)]],
            )
            gx, gh0, gc0 = (None if g is None else g[0] for g in grads[:3])
            gw = list(grads[3:]) + [None] * (4 - len(weights))
            return (None, gx, gh0, gc0, *gw)
        dh = grad_h1.detach().clone(memory_format=torch.contiguous_format)
        dc = grad_c1.detach().clone(memory_format=torch.contiguous_format) if lstm_cell else c0
        G = spec.gates * H
        dgx = torch.empty((B, G), dtype=x.dtype)
        dgh = torch.empty((B, G), dtype=x.dtype) if spec.kernels.SEPARATE_DGH else dgx
        engine.cell_backward(
            spec, _np(gates), _np(h0), _np(c0), dh.numpy(), _np(dc), dgx.numpy(), dgh.numpy()
        )
        x, h0, w_ih, w_hh = x.detach(), h0.detach(), w_ih.detach(), w_hh.detach()
        gx = torch.mm(dgx, w_ih) if needs[3] else None
        gh0 = torch.addmm(dh, dgh, w_hh) if needs[4] else None
        gc0 = dc if (lstm_cell and needs[5]) else None
        gw_ih = torch.mm(dgx.t(), x) if needs[6] else None
        gw_hh = torch.mm(dgh.t(), h0) if needs[7] else None
        gb_ih = dgx.sum(0) if b_ih is not None and needs[8] else None
        gb_hh = dgh.sum(0) if b_hh is not None and needs[9] else None
        return None, gx, gh0, gc0, gw_ih, gw_hh, gb_ih, gb_hh


def _check_shapes(spec, x, h0, w_ih, w_hh, b_ih, b_hh):
    """torch.nn's RuntimeError for parameters a user replaced with wrong shapes: the
    kernels index with these sizes, never past the memory."""
    G = spec.gates * h0.shape[1]
    want = {
        "weight_ih": (G, x.shape[1]),
        "weight_hh": (G, h0.shape[1]),
        "bias_ih": (G,),
        "bias_hh": (G,),
    }
    for name, w in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih), ("bias_hh", b_hh)):
        if w is not None and tuple(w.shape) != want[name]:
            raise RuntimeError(
                f"{name} must have shape {want[name]} for this cell's configuration; got "
                f"{tuple(w.shape)}"
            )


def step(config, x, h0, c0, w_ih, w_hh, b_ih, b_hh, train):
    """``(h1, c1)`` of one step; ``c1`` is empty but for LSTM. Inputs 2-D, contiguous."""
    spec = spec_for(config)
    _check_shapes(spec, x, h0, w_ih, w_hh, b_ih, b_hh)
    if train:
        return CellFunction.apply(config, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    with torch.no_grad():
        h1, c1, _ = _forward(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, False)
    return h1, c1
