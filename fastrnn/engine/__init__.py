"""The engine: the one door to fastrnn's recurrent kernels, for the models and the bridge.

A :class:`Spec` says what to compute, ``params`` (torch's names to arrays) with what;
:func:`forward` runs a whole multi-layer stack and, with ``train=True``, leaves a
:class:`Tape`; :func:`backward` turns the tape and the output gradients into
:class:`Gradients`. :class:`CellAt` (:func:`cell_at`) is one time step of one layer,
forward and backward, over memory given by address (the ``*Cell`` loops of callers
whose arrays are not NumPy's). Arrays are the caller's:
NumPy arrays run on the CPU backend, device arrays (``__cuda_array_interface__``) on the
CUDA one (:func:`backend_for`). The engine validates nothing a user typed: the models do.
"""

import functools
import threading

import numpy as np

from .. import pairs, recurrence
from ..tiles import fixed_tiles, tile_view
from . import cpu, driver, pieces
from .cpu import BLAS_MIN_BATCH, CPU
from .spec import Spec, suffix
from .tape import Gradients, Steps, Tape

__all__ = [
    "Spec",
    "Tape",
    "Steps",
    "Gradients",
    "forward",
    "backward",
    "step",
    "step_plan",
    "StepPlan",
    "step_weights",
    "step_scratch",
    "scaled_masks",
    "mask_scale",
    "cell_at",
    "CellAt",
    "backend_for",
    "suffix",
    "BLAS_MIN_BATCH",
]


def backend_for(x):
    """The backend that computes on arrays like ``x``: CPU for NumPy arrays, CUDA for
    device arrays."""
    if type(x) is np.ndarray:
        return CPU
    from ..cuda import backend, is_device_array

    return backend.CUDA if is_device_array(x) else CPU


def forward(spec, params, x, state, lengths, *, train=False, dropout_masks=(), int8=None):
    """Run every layer and direction of ``spec`` over a sequence.

    Parameters
    ----------
    spec : Spec
    params : dict of str to array
        torch's parameter names (``spec.param_shapes()``) to arrays of those shapes.
    x : array, shape (seq_len, batch, input_size), contiguous
    state : tuple (h, c)
        ``h`` (num_layers * num_directions, batch, H_out) and ``c`` (same, hidden_size;
        ignored but for LSTM, may have 0 features), contiguous: they hold the initial
        state and are left holding the final one (the caller's buffers).
    lengths : array of int64, shape (batch,)
        Valid steps per sequence (the backend's array: device lengths on the GPU).
    train : bool
        Record and return a :class:`Tape`.
    dropout_masks : sequence of arrays, shape (seq_len, batch, num_directions * H_out)
        Scaled inter-layer masks (:func:`scaled_masks`), applied after every layer
        but the last.
    int8 : dict, optional
        Quantized recurrent weights (the model's format, see :mod:`fastrnn.quantized`),
        ``"weight_hh..."`` name to ``(transposed stored weights, row scales)``: int8 with
        float32 scales, or bfloat16 bits (uint16) with scales None (CPU only).

    Returns
    -------
    y : array, shape (seq_len, batch, num_directions * H_out)
    state : tuple (h, c)
        ``state`` itself, now the final state.
    tape : Tape or None
    """
    h, c = state
    backend = backend_for(x)
    split = pieces.stack_pieces(backend, x.shape[1], x.shape[0])
    run = driver.forward
    if split is not None:  # (a batch split a whole stack at a time on threads)
        run = functools.partial(pieces.forward, pieces=split)
    y, tape = run(spec, params, x, h, c, lengths, backend, train, dropout_masks, int8)
    return y, state, tape


def backward(spec, params, tape, grad_y, grad_state, *, input_grad=True, param_grads=True):
    """Backpropagation through time from a :func:`forward` tape.

    Parameters
    ----------
    spec, params
        As given to :func:`forward`.
    tape : Tape
    grad_y : array, shape (seq_len, batch, num_directions * H_out)
    grad_state : tuple (dh, dc)
        Gradients w.r.t. the final state, contiguous, shaped like the state; they
        are overwritten with the gradients w.r.t. the initial state.
    input_grad : bool
        Compute the gradient w.r.t. ``x`` (else ``Gradients.input`` is None).
    param_grads : bool or collection of str
        Which parameter gradients to compute; the others are zeros (None: none at all).

    Returns
    -------
    Gradients
        ``input`` (seq_len, batch, input_size), ``hx`` the ``grad_state`` tuple,
        ``params`` torch's names to arrays (None when none was asked for).
    """
    dh, dc = grad_state
    backend = backend_for(tape.layer_inputs[0])
    T, B = grad_y.shape[:2]
    split = pieces.stack_pieces(backend, B, T)
    run = driver.backward
    if split is not None:
        run = functools.partial(pieces.backward, pieces=split)
    return run(spec, params, tape, grad_y, dh, dc, backend, input_grad, param_grads)


def mask_scale(spec):
    """The factor of kept values under inter-layer dropout: ``1 / (1 - dropout)``
    (inverted dropout, as torch.nn), 0 when everything is dropped."""
    return 0.0 if spec.dropout == 1 else 1.0 / (1.0 - spec.dropout)


def scaled_masks(spec, keep_masks):
    """NumPy keep-masks (nonzero: keep) as the scaled masks :func:`forward` applies."""
    scale = mask_scale(spec)
    return [np.ascontiguousarray((m != 0).astype(spec.dtype) * scale) for m in keep_masks]


def step_weights(spec, params, int8=None, batch=None):
    """Per layer, the arrays :func:`step` reads, for the forward direction: the input and
    recurrent weights transposed, each with its row scales (float weights: scales None;
    a quantized model, ``int8`` as in :func:`forward`: int8 weights), the biases and the
    projection (None without one).

    The models store ``W_ih``/``W_hh`` column-major, so the float transposes are views
    of the model's own memory (weights of another layout are copied here); for steps of
    one row (``batch`` 1) the weights are seen as column tiles where that pays
    (:func:`fastrnn.tiles.tile_view`: still views, so editing a model's weights in place
    still changes its steps); a quantized model's, which never change, are packed in
    tiles once (:func:`fastrnn.tiles.fixed_tiles`), or bfloat16 ones in pair panels
    (:mod:`fastrnn.pairs`) where the CPU has ``vdpbf16ps``."""
    layers = []
    for layer in range(spec.num_layers):
        w_ih, w_hh, b_ih, b_hh, w_hr = driver.layer_params(spec, params, layer, 0, CPU)
        if int8:
            products = int8[f"weight_ih_l{layer}"] + int8[f"weight_hh_l{layer}"]
            if batch is not None and cpu.pairs_pay(products[0]):  # bfloat16 pairs, each
                # followed by its rows' pair scratch (as at every batch size)
                products = (
                    pairs.fixed_pairs(products[0]),
                    pairs.scratch(batch, products[0].shape[0]),
                    pairs.fixed_pairs(products[2]),
                    pairs.scratch(batch, products[2].shape[0]),
                )
        else:
            products = (np.ascontiguousarray(w_ih.T), None, np.ascontiguousarray(w_hh.T), None)
        if batch == 1 and products[0].ndim == 2:  # weights (each followed by its scales)
            # as tiles where they fit
            products = tuple(_as_tiles(a) if i % 2 == 0 else a for i, a in enumerate(products))
        layers.append(products + (b_ih, b_hh, w_hr if spec.proj_size else None))
    return layers


def _as_tiles(w):
    tiles = fixed_tiles(w)
    if tiles is None:
        tiles = tile_view(w)
    return w if tiles is None else tiles


def step_scratch(spec, batch):
    """The workspace of :func:`step` for ``batch`` rows (allocate once, reuse)."""
    H, P, dt = spec.hidden_size, spec.output_size, spec.dtype
    return (
        np.empty((batch, spec.gates * H), dt),
        np.empty((batch, spec.gates * H), dt),
        np.empty((batch, H), dt),
        np.empty((batch, max(P, H)), dt),
        np.ones(batch, np.int64),
    )


def step(spec, weights, x, h, c, scratch, h_in=None, c_in=None):
    """One time step of every layer of a unidirectional stack, on the CPU (streaming).

    ``weights`` from :func:`step_weights`, ``scratch`` from :func:`step_scratch`; ``x``
    (batch, input_size) contiguous; ``h`` (num_layers, batch, H_out) and ``c``
    (num_layers, batch, hidden_size; 0 features but for LSTM) receive the new state,
    read from ``h_in``/``c_in`` (same shapes; None: ``h``/``c``, updated in place), and
    ``h[-1]`` is the step's output.
    """
    step_plan(spec, weights, h, c, scratch, h_in, c_in).dispatch(x)


class StepPlan:
    """:func:`step` with everything but the input bound (:func:`step_plan`): calling it
    with ``x`` runs the kernels on argument lists made once, so a stream's step makes no
    array views and reads no attributes (a few microseconds of a batch-1 step).

    From the second call the compiled kernel is entered directly, without the
    dispatcher's typing of its 18 arguments (about 1 us per layer here): the bound
    arrays are the plan's own, and ``x`` must be what the first call was given, a
    C-contiguous, aligned 2-D array of the model's dtype (the streaming path checks).
    """

    __slots__ = ("kernel", "first", "rest", "entry")

    def __init__(self, kernel, first, rest):
        self.kernel, self.first, self.rest = kernel, first, rest
        self.entry = None

    def __call__(self, x):
        entry = self.entry
        if entry is None:
            self.dispatch(x)
            self.entry = _entry_point(self.kernel, (x, *self.first), self.rest) or self.kernel
            return
        entry(x, *self.first)
        for args in self.rest:
            entry(*args)

    def dispatch(self, x):
        """One step through Numba's dispatcher (every argument typed: a plan used once)."""
        kernel = self.kernel
        kernel(x, *self.first)
        for args in self.rest:
            kernel(*args)


def _entry_point(kernel, first, rest):
    """The compiled overload ``kernel`` runs for every argument list of a plan (all of
    one signature), or None (keep calling through the dispatcher: a layer whose
    arguments differ in type, or Numba without compiled overloads)."""
    from numba import typeof

    overloads = getattr(kernel, "overloads", None)  # (none with NUMBA_DISABLE_JIT)
    signatures = {tuple(typeof(a) for a in args) for args in (first, *rest)}
    if overloads is None or len(signatures) != 1:
        return None
    found = overloads.get(signatures.pop())
    return None if found is None else found.entry_point


def step_plan(spec, weights, h, c, scratch, h_in=None, c_in=None):
    """The :class:`StepPlan` of :func:`step` over these arrays (same arguments, ``x``
    given at each call; the arrays must stay the ones bound here)."""
    kernel = recurrence.LOOPS[spec.kernels].step_layer
    activation = spec.activation
    h_in = h if h_in is None else h_in
    c_in = c if c_in is None else c_in
    calls = [
        (*arrays, h_in[layer], c_in[layer], h[layer], c[layer], activation, *scratch)
        for layer, arrays in enumerate(weights)
    ]
    rest = tuple((h[layer - 1], *calls[layer]) for layer in range(1, len(calls)))
    return StepPlan(kernel, calls[0], rest)


class CellAt:
    """One step of one layer, forward and backward, over memory given by address (ints):
    the per-call path of a ``*Cell`` stepped in a Python loop, which would spend more
    time making NumPy views of its tensors than computing (the torch bridge's cells).

    Every address is of C-contiguous memory of ``spec.dtype`` that holds the shape
    written beside it and outlives the call; the caller checks both (nothing here can).
    The products are Numba loops that read each weight once per call: the right tool
    while the batch is small. For larger batches the caller computes them with a BLAS
    and hands them in (``gx``, ``gh``; ``dgx``, ``dgh``): the rest of the step is still
    one call. The scratch space is this thread's, reused.
    """

    def __init__(self, spec):
        loops = recurrence.LOOPS[spec.kernels]
        self._forward, self._backward = loops.cell_forward_at, loops.cell_backward_at
        self._like = spec.dtype.type(0)
        self._dtype = spec.dtype
        self.input_size, self.hidden_size = spec.input_size, spec.hidden_size
        self.tape_width = spec.tape_gates * spec.hidden_size
        self._activation = spec.activation
        self._width = spec.gates * spec.hidden_size
        self._local = threading.local()  # .spaces: (B, products) -> _workspace's tuple

    def _workspace(self, B, products):
        """This thread's scratch space for a step of ``B`` rows, cached per ``B`` and
        whether the kernels compute the products: the kernels' (an address), room for
        the gates of a step that keeps none (an address after it), and ``B`` int64 ones
        (every row runs: the lengths the kernels read)."""
        try:
            return self._local.spaces[B, products]
        except (AttributeError, KeyError):
            G, H = self._width, self.hidden_size
            kernel = 4 * B * H + G + recurrence.cell_panel_scratch(B, self.input_size, H, G)
            if products:  # (their results)
                kernel += 2 * B * G
            n = kernel + B * self.tape_width
            found = self._local.spaces = getattr(self._local, "spaces", {})
            array = getattr(self._local, "array", None)
            ones = getattr(self._local, "ones", None)
            if array is None or array.size < n or ones.size < B:
                # one buffer and one row of ones per thread, as large as the largest
                # step seen (the cached entries are views: memory stays O(largest B))
                array = self._local.array = np.empty(
                    n if array is None else max(n, array.size), self._dtype
                )
                ones = self._local.ones = np.ones(
                    B if ones is None else max(B, ones.size), np.int64
                )
                found.clear()  # (addresses in the old array)
            address = array.ctypes.data
            found[B, products] = (address, address + kernel * array.itemsize, ones[:B])
            return found[B, products]

    def forward(self, B, x, h0, c0, w_ih, w_hh, b_ih, b_hh, h1, c1, gates, gx=0, gh=0):
        """``h1`` (B, H) and, for LSTM, ``c1`` (B, H) from ``x`` (B, I), ``h0``, ``c0``
        (B, H; ``c0``/``c1`` ignored but for LSTM) and torch-layout weights ``w_ih`` (G·H,
        I), ``w_hh`` (G·H, H), biases (G·H,) or 0 for none; ``gates`` (B,
        :attr:`tape_width`) receives what :meth:`backward` needs, or is 0 (inference:
        they go to scratch space). ``gx``, ``gh`` (B, G·H): the products ``x W_ih^T`` and
        ``h0 W_hh^T`` when the caller computed them (``gh`` is overwritten; ``x`` and the
        weights are then not read), else 0."""
        scratch, spare, ones = self._workspace(B, not gx)
        self._forward(
            self._like, B, self.input_size, self.hidden_size, x, h0, c0, w_ih, w_hh, b_ih,
            b_hh, h1, c1, gates or spare, scratch, self._activation, ones, gx, gh,
        )  # fmt: skip

    def backward(self, B, gates, x, h0, c0, w_ih, w_hh, dh1, dc1, dx, dh0, dc0, dw_ih, dw_hh,
                 db_ih, db_hh, dgx=0, dgh=0):  # fmt: skip
        """The gradients of a :meth:`forward` step (its ``gates``, inputs and weights):
        from the outgoing state's ``dh1``, ``dc1`` (B, H; 0 for zero), written (not
        accumulated) to ``dx`` (B, I), ``dh0``, ``dc0`` (B, H), ``dw_ih``, ``dw_hh`` (the
        weights' shapes), ``db_ih``, ``db_hh`` (G·H,), each 0 when not wanted. With
        ``dgx``, ``dgh`` (B, G·H; one address for a cell type with one gate gradient)
        the gate gradients go there for the caller's products: pass ``dx``, ``dw_ih``,
        ``dw_hh`` and ``w_hh`` as 0, and ``dh0`` gets all but ``dgh W_hh``."""
        scratch, _, ones = self._workspace(B, not dgx)
        self._backward(
            self._like, B, self.input_size, self.hidden_size, gates, x, h0, c0, w_ih, w_hh,
            dh1, dc1, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, scratch, self._activation,
            ones, dgx, dgh,
        )  # fmt: skip


@functools.lru_cache(maxsize=64)
def cell_at(spec):
    """The :class:`CellAt` of a one-layer ``spec`` (made once per spec)."""
    return CellAt(spec)
