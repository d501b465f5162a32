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
import weakref

import torch

from fastrnn import engine

from . import _twice
from ._ops import _batched, address, cpp_apply, mm, spec_for

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
    :data:`CELL_PANEL_WEIGHTS` elements when torch computes on one thread (on more,
    torch's BLAS splits the products across them: two cores, B=32 H=256, the kernel's
    single-threaded products ran at 0.74-0.93x torch.nn's loop, BLAS's at 0.93-1.11x)."""
    return B < engine.BLAS_MIN_BATCH or (_small(spec) and torch.get_num_threads() == 1)


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
        gx, gh = mm(x, w_ih.t()), mm(h0, w_hh.t())
    at.forward(
        B, x.data_ptr(), h0.data_ptr(), address(c0), w_ih.data_ptr(), w_hh.data_ptr(),
        address(b_ih), address(b_hh), h1.data_ptr(), address(c1), address(gates),
        address(gx), address(gh),
    )  # fmt: skip
    return h1, c1, gates


#: Rows below which a step's weight gradients are left to its :class:`Loop`. A step of
#: a few rows writes weight gradients the size of the weights for little arithmetic
#: (cell loops T=20, one core, vs torch.nn, per-step gradients -> a loop's: B=1 H=256
#: GRU 1.43 -> 1.80x, LSTM 1.34 -> 2.30x); from 16 rows the steps' own products on
#: panels beat one product over all steps through torch's BLAS (B=64 H=256 RNN: 34.7
#: vs 43.5 ms).
LOOP_MAX_BATCH = 16
#: Weight elements (``G·(I + H)``) above which a loop pays: below, a loop's own cost
#: (its node, the steps' gate gradients kept and concatenated) is about what it saves.
#: Cell loops T=20 at B=1, one core, us per step without -> with a loop: on a Zen 5
#: (AVX-512) RNN H=64 (8192 elements) 43.7 -> 44.0, H=128 49.1 -> 46.2, H=256 75.6 ->
#: 61.9, LSTM H=64 56.6 -> 52.1, GRU H=64 49.5 -> 49.4 (torch.nn: 49, 55, 83, 91, 90);
#: on this project's earlier Zen 3 VM a loop lost below 2^17 (B=1 H=64 RNN 0.99 ->
#: 0.79x, LSTM 1.67 -> 1.51x torch.nn's speed).
LOOP_MIN_WEIGHTS = 1 << 14


@functools.lru_cache(maxsize=64)
def _loop_pays(spec):
    return spec.gates * spec.hidden_size * (spec.input_size + spec.hidden_size) > LOOP_MIN_WEIGHTS


class Loop:
    """A cell's weights as one autograd node for the steps of a training loop
    (:class:`LoopWeights`): each step's backward leaves its gate gradients here instead
    of returning weight gradients, and the weights' node, which autograd runs after every
    step that used it, makes them as one product over all the steps.

    A step's weight gradients are a product of its few rows (an outer product at batch
    1: 1 MB written per step for an H=256 LSTM's ``W_ih``) that autograd then adds into
    a running sum, step after step; here they are one product of all the steps' rows,
    written once. ``views`` are what the steps take as weights (views of the
    parameters, through the node); the node's backward takes what the steps of the same
    backward pass left (``keep`` files by graph task: a pass that does not reach the
    weights, ``autograd.grad(..., inputs=[h0])``, leaves nothing).
    """

    __slots__ = ("weights", "grads", "views", "node", "kept", "done", "__weakref__")

    def __init__(self, weights):
        self.weights = weights  # (the views below hold them alive anyway)
        self.grads = tuple(w is not None and w.requires_grad for w in weights)
        self.kept = {}  # graph task id -> [(dgx, dgh, x, h0), ...]
        self.done = False
        present = [w for w in weights if w is not None]
        views = iter(_loop_apply(self, *present))
        self.views = [None if w is None else next(views) for w in weights]
        self.node = next(v for v in self.views if v is not None and v.requires_grad).grad_fn

    def fits(self, weights):
        """Whether steps on ``weights`` (the module's parameters now) can use it."""
        if self.done:
            return False
        for w, mine, grad in zip(weights, self.weights, self.grads):
            if w is not mine or (w is not None and w.requires_grad is not grad):
                return False
        return True

    def keep(self, dgx, dgh, x, h0):
        """File a step's gate gradients and inputs for this backward pass, if it reaches
        the weights' node."""
        if torch._C._will_engine_execute_node(self.node):
            task = torch._C._current_graph_task_id()
            self.kept.setdefault(task, []).append((dgx, dgh, x, h0))

    def take(self):
        """What the steps of the current backward pass left."""
        self.done = True
        return self.kept.pop(torch._C._current_graph_task_id(), [])


class LoopWeights(torch.autograd.Function):
    """The weights of a :class:`Loop` (``*weights``: the present ones of ``w_ih, w_hh,
    b_ih, b_hh``), passed through as views; the backward adds the weight gradients of the
    steps' gate gradients to what reaches it (steps whose backward builds a graph
    return theirs)."""

    @staticmethod
    def forward(ctx, loop, *weights):
        ctx.set_materialize_grads(False)
        ctx.loop = weakref.ref(loop)  # (the loop holds this node: no cycle through C++)
        return tuple(w.view_as(w) for w in weights)

    @staticmethod
    def backward(ctx, *grads):
        loop = ctx.loop()  # (alive while a step that used it is: they hold it)
        kept = [] if loop is None else loop.take()
        grads = list(grads)
        if kept:
            dgx = torch.cat([k[0] for k in kept])
            dgh = dgx if kept[0][1] is kept[0][0] else torch.cat([k[1] for k in kept])
            x, h0 = torch.cat([k[2] for k in kept]), torch.cat([k[3] for k in kept])
            made = (
                lambda: mm(dgx.t(), x),
                lambda: mm(dgh.t(), h0),
                lambda: dgx.sum(0),
                lambda: dgh.sum(0),
            )
            for i, make in enumerate(made[: len(grads)]):
                if ctx.needs_input_grad[1 + i]:
                    grads[i] = make() if grads[i] is None else grads[i] + make()
        return (None, *grads)


_loop_apply = cpp_apply(LoopWeights)


def loop_weights(owner, w_ih, w_hh, b_ih, b_hh):
    """The :class:`Loop` of ``owner`` (a cell module) for these weights: the one its last
    steps used while its backward has not run and the weights are the same tensors,
    else a new one."""
    weights = (w_ih, w_hh, b_ih, b_hh)
    loop = owner.__dict__.get("_fastrnn_loop")
    if loop is None or not loop.fits(weights):
        loop = owner.__dict__["_fastrnn_loop"] = Loop(weights)
    return loop


class CellFunction(torch.autograd.Function):
    """One step of a cell: ``(h1, c1)`` from ``(x, h0, c0)`` and the weights (a
    :class:`Loop`'s views with ``loop``, which then gets the gate gradients)."""

    @staticmethod
    def forward(ctx, config, loop, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        spec = spec_for(config)
        h1, c1, gates = _forward(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, True)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates)
        ctx.config, ctx.loop = config, loop
        return (h1, c1) if spec.has_cell_state else h1

    @staticmethod
    def backward(ctx, grad_h1, grad_c1=None):
        config = ctx.config
        spec = spec_for(config)
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates = ctx.saved_tensors
        needs = (None, None) + ctx.needs_input_grad[1:]  # (..., x, h0, c0, w_ih, ...)
        B, H = h0.shape
        if not (torch.is_grad_enabled() or _batched(grad_h1, grad_c1)):
            return (None,) + _backward_at(
                spec, needs, x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates, grad_h1, grad_c1,
                ctx.loop,
            )  # fmt: skip
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
        return (None, None, gx, gh0, gc0, *gw)


# used when no functorch transform is active (then the Python prologue runs)
_apply = cpp_apply(CellFunction)


def _backward_at(
    spec, needs, x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates, grad_h1, grad_c1, loop=None
):
    """:meth:`CellFunction.backward`: one kernel call; for weights past
    :data:`CELL_PANEL_WEIGHTS` (or torch on more threads) the kernel writes the gate
    gradients and :func:`~._ops.mm` makes the products. With a :class:`Loop` the gate
    gradients go to the loop, which makes the weight gradients (none returned here)."""
    B = h0.shape[0]
    # kept in names until the kernel returns: a temporary's memory may be reused at once
    grad_h1, grad_c1 = _contiguous(grad_h1), _contiguous(grad_c1)
    mine = loop is None  # (the weight gradients made here)
    products = _at(spec, B)  # (in the kernel; else ``mm`` from the gate gradients)
    dx = torch.empty_like(x) if needs[3] and products else None
    dh0 = torch.empty_like(h0) if needs[4] else None
    dc0 = torch.empty_like(h0) if needs[5] and spec.has_cell_state else None
    dw_ih = torch.empty_like(w_ih) if mine and needs[6] and products else None
    dw_hh = torch.empty_like(w_hh) if mine and needs[7] and products else None
    db_ih = torch.empty_like(b_ih) if mine and b_ih is not None and needs[8] else None
    db_hh = torch.empty_like(b_hh) if mine and b_hh is not None and needs[9] else None
    dgx = dgh = None
    if not (mine and products):  # the gate gradients wanted out of the kernel
        dgx = h0.new_empty((B, spec.gates * h0.shape[1]))
        dgh = torch.empty_like(dgx) if spec.kernels.SEPARATE_DGH else dgx
    inside = (w_ih, w_hh, dx, dw_ih, dw_hh) if products else (None,) * 5
    engine.cell_at(spec).backward(
        B, gates.data_ptr(), x.data_ptr(), h0.data_ptr(), address(c0), address(inside[0]),
        address(inside[1]), address(grad_h1), address(grad_c1), address(inside[2]),
        address(dh0), address(dc0), address(inside[3]), address(inside[4]), address(db_ih),
        address(db_hh), address(dgx), address(dgh),
    )  # fmt: skip
    if not products:
        if needs[3]:
            dx = mm(dgx, w_ih)
        if dh0 is not None:
            dh0 += mm(dgh, w_hh)
        if mine and needs[6]:
            dw_ih = mm(dgx.t(), x)
        if mine and needs[7]:
            dw_hh = mm(dgh.t(), h0)
    if loop is not None:
        loop.keep(dgx, dgh, x, h0)
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


def checked_step(config, x, h0, c0, w_ih, w_hh, b_ih, b_hh, train, owner=None):
    """:func:`step` of tensors already checked: weights of the configuration's shapes,
    every tensor contiguous and of one dtype, on the CPU. With ``owner`` (the cell
    module: its parameters are the weights) a step whose weights take gradients joins
    the module's :class:`Loop`."""
    if train:
        if torch._C._are_functorch_transforms_active():
            return CellFunction.apply(config, None, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        loop = None
        if owner is not None and x.shape[0] < LOOP_MAX_BATCH and _loop_pays(spec_for(config)) and (
            w_ih.requires_grad or w_hh.requires_grad or (
                b_ih is not None and (b_ih.requires_grad or b_hh.requires_grad)
            )
        ):  # fmt: skip
            loop = loop_weights(owner, w_ih, w_hh, b_ih, b_hh)
            w_ih, w_hh, b_ih, b_hh = loop.views
        return _apply(config, loop, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    # Nothing here is recorded by autograd (the kernels write fresh tensors, the
    # products read detached ones): no ``no_grad`` context needed.
    spec = spec_for(config)
    h1, c1, _ = _forward(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, False)
    return (h1, c1) if spec.has_cell_state else h1
