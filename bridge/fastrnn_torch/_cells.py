"""The eager CPU path of the ``*Cell`` modules: one time step, forward and backward,
with as little work per call as a Python loop over time can afford.

A cell stepped in a training loop is called thousands of times with small tensors, so
the general layer machinery (configuration, tapes, a bound core model) would cost more
than the arithmetic. A forward is one kernel call (both products, the fused gate
kernel of the cell type, the gates kept for the backward) and a backward one more (gate
gradients, the input and state gradients, the weight gradients), both handed the
tensors' addresses (``data_ptr()``): a NumPy view of a tensor costs about as much as a
batch-1 H=64 step's arithmetic. From ``BLAS_MIN_BATCH`` rows the products run on
register-blocked panels of the step's rows (``fastrnn.tile_gemm``), the weights read in
place; only weights larger than :data:`CELL_PANEL_WEIGHTS` take their products from
torch's BLAS around the same fused gate kernels. The same kernels as everywhere else:
parity with torch.nn is tested.

Where the microseconds of a batch-1 step went before (this project's VM, H=64 RNNCell,
cProfile and timers): ``autograd.Function.apply`` itself ~25 µs, nine ``.numpy()``
views ~2.3 µs each, five allocations ~4 µs each, the module's checks ~30 µs in small
helpers; torch.nn's whole forward step was ~40 µs.
"""

import functools

import torch

from fastrnn import engine

from . import _twice
from ._ops import _batched, address, cpp_apply, spec_for

#: Weight elements (``G·H·max(I, H)``) up to which a step of any batch runs in one kernel
#: call, its products on panels (``fastrnn.recurrence.CELL_PANEL_ROWS``); larger weights
#: take torch's BLAS from ``BLAS_MIN_BATCH`` rows. Cell loops (T=20, fwd+bwd, one
#: core, vs torch.nn, BLAS products -> panels): B=32 H=64 RNN 0.88 -> 1.10x, GRU 1.23
#: -> 1.52x, LSTM 1.17 -> 1.46x; B=32 H=256 RNN 0.85 -> 1.04x, GRU 0.91 -> 1.01x, LSTM
#: 0.97 -> 1.03x; at H=512 an LSTM's or GRU's 2-4 MB weights, read in place with rows 2
#: KB apart, lose to BLAS's packing (LSTM B=64 0.94 vs 0.90-0.94x).
CELL_PANEL_WEIGHTS = 1 << 18


@functools.lru_cache(maxsize=64)
def _small(spec):
    H = spec.hidden_size
    return spec.gates * H * max(spec.input_size, H) <= CELL_PANEL_WEIGHTS


def _at(spec, B):
    """Whether a step of ``B`` rows is one :class:`fastrnn.engine.CellAt` call (its
    products in the kernel): below ``BLAS_MIN_BATCH`` rows, or weights of at most
    :data:`CELL_PANEL_WEIGHTS` elements."""
    return B < engine.BLAS_MIN_BATCH or _small(spec)


def _forward(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, keep_gates):
    """``(h1, c1, gates)`` tensors; ``gates`` (B, tape_gates*H), flat, only with
    ``keep_gates`` (else None). Every tensor contiguous, of one dtype, of the
    configuration's shapes (the module and :func:`step` check); ``c0`` None but for
    LSTM. One kernel call; from ``BLAS_MIN_BATCH`` rows torch's BLAS computes the two
    products first (no NumPy views either way)."""
    B = h0.shape[0]
    at = engine.cell_at(spec)
    h1 = torch.empty_like(h0)  # (the cheapest allocation torch offers: ~1 us)
    c1 = torch.empty_like(h0) if spec.has_cell_state else None
    gates = h0.new_empty(B * at.tape_width) if keep_gates else None  # (flat: cheaper)
    gx = gh = None
    if not _at(spec, B):  # (in a Function's forward or without grad: no graph recorded)
        gx, gh = torch.mm(x, w_ih.t()), torch.mm(h0, w_hh.t())
    at.forward(
        B, x.data_ptr(), h0.data_ptr(), address(c0), w_ih.data_ptr(), w_hh.data_ptr(),
        address(b_ih), address(b_hh), h1.data_ptr(), address(c1), address(gates),
        address(gx), address(gh),
    )  # fmt: skip
    return h1, c1, gates


class CellFunction(torch.autograd.Function):
    """One step of a cell: ``(h1, c1)`` from ``(x, h0, c0)`` and the weights."""

    @staticmethod
    def forward(ctx, config, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        spec = spec_for(config)
        h1, c1, gates = _forward(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, True)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates)
        ctx.config = config
        return (h1, c1) if spec.has_cell_state else h1

    @staticmethod
    def backward(ctx, grad_h1, grad_c1=None):
        config = ctx.config
        spec = spec_for(config)
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates = ctx.saved_tensors
        needs = (None, None, None) + ctx.needs_input_grad[1:]  # (..., x, h0, c0, w_ih, ...)
        B, H = h0.shape
        if not (torch.is_grad_enabled() or _batched(grad_h1, grad_c1)):
            return _backward_at(
                spec, needs, x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates, grad_h1, grad_c1
            )
        # create_graph=True or is_grads_batched: differentiable torch operators
        lstm_cell = spec.has_cell_state
        if c0 is None:  # the kernels' empty cell state of the cells without one
            c0 = x.new_empty((B, 0))
        if grad_h1 is None:
            grad_h1 = torch.zeros_like(h0)
        if lstm_cell and grad_c1 is None:
            grad_c1 = torch.zeros_like(c0)
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


# used when no functorch transform is active (then the Python prologue runs)
_apply = cpp_apply(CellFunction)


def _backward_at(spec, needs, x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates, grad_h1, grad_c1):
    """:meth:`CellFunction.backward`: one kernel call; from ``BLAS_MIN_BATCH`` rows it
    leaves the gate gradients to torch's BLAS for the four products."""
    B = h0.shape[0]
    # kept in names until the kernel returns: a temporary's memory may be reused at once
    grad_h1, grad_c1 = _contiguous(grad_h1), _contiguous(grad_c1)
    dh0 = torch.empty_like(h0) if needs[4] else None
    dc0 = torch.empty_like(h0) if needs[5] and spec.has_cell_state else None
    db_ih = torch.empty_like(b_ih) if b_ih is not None and needs[8] else None
    db_hh = torch.empty_like(b_hh) if b_hh is not None and needs[9] else None
    at = engine.cell_at(spec)
    if _at(spec, B):
        dx = torch.empty_like(x) if needs[3] else None
        dw_ih = torch.empty_like(w_ih) if needs[6] else None
        dw_hh = torch.empty_like(w_hh) if needs[7] else None
        at.backward(
            B, gates.data_ptr(), x.data_ptr(), h0.data_ptr(), address(c0), w_ih.data_ptr(),
            w_hh.data_ptr(), address(grad_h1), address(grad_c1),
            address(dx), address(dh0), address(dc0), address(dw_ih), address(dw_hh),
            address(db_ih), address(db_hh),
        )  # fmt: skip
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh
    dgx = h0.new_empty((B, spec.gates * h0.shape[1]))
    dgh = torch.empty_like(dgx) if spec.kernels.SEPARATE_DGH else dgx
    at.backward(
        B, gates.data_ptr(), x.data_ptr(), h0.data_ptr(), address(c0), 0, 0,
        address(grad_h1), address(grad_c1), 0, address(dh0), address(dc0), 0, 0,
        address(db_ih), address(db_hh), dgx.data_ptr(), dgh.data_ptr(),
    )  # fmt: skip
    dx = torch.mm(dgx, w_ih) if needs[3] else None
    if dh0 is not None:
        dh0.addmm_(dgh, w_hh)
    dw_ih = torch.mm(dgx.t(), x) if needs[6] else None
    dw_hh = torch.mm(dgh.t(), h0) if needs[7] else None
    return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


def _contiguous(t):
    return None if t is None else t.contiguous()


def _check_shapes(spec, x, h0, w_ih, w_hh, b_ih, b_hh):
    """torch.nn's RuntimeError for parameters a user replaced with wrong shapes: the
    kernels index with these sizes, never past the memory."""
    G, H = spec.gates * h0.shape[1], h0.shape[1]
    want = ((G, x.shape[1]), (G, H), (G,), (G,))
    given = (w_ih, w_hh, b_ih, b_hh)
    if w_ih.shape == want[0] and w_hh.shape == want[1] and (b_ih is None or (
        b_ih.shape == want[2] and b_hh.shape == want[3]
    )):  # fmt: skip
        return
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    for name, w, shape in zip(names, given, want):
        if w is not None and w.shape != shape:
            raise RuntimeError(
                f"{name} must have shape {shape} for this cell's configuration; got "
                f"{tuple(w.shape)}"
            )


def step(config, x, h0, c0, w_ih, w_hh, b_ih, b_hh, train):
    """One step: ``(h1, c1)`` for LSTM, ``h1`` for the others. ``x``, ``h0``, ``c0`` 2-D,
    contiguous, of the weights' dtype (``c0`` None but for LSTM)."""
    spec = spec_for(config)
    _check_shapes(spec, x, h0, w_ih, w_hh, b_ih, b_hh)
    weights = (w_ih, w_hh, b_ih, b_hh)
    if not all(w is None or w.is_contiguous() for w in weights):
        w_ih, w_hh, b_ih, b_hh = (None if w is None else w.contiguous() for w in weights)
    return checked_step(config, x, h0, c0, w_ih, w_hh, b_ih, b_hh, train)


def checked_step(config, x, h0, c0, w_ih, w_hh, b_ih, b_hh, train):
    """:func:`step` of tensors already checked: weights of the configuration's shapes,
    every tensor contiguous and of one dtype, on the CPU."""
    if train:
        apply = CellFunction.apply if torch._C._are_functorch_transforms_active() else _apply
        return apply(config, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    # Nothing here is recorded by autograd (the kernels write fresh tensors, the
    # products read detached ones): no ``no_grad`` context needed.
    spec = spec_for(config)
    h1, c1, _ = _forward(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, False)
    return (h1, c1) if spec.has_cell_state else h1
