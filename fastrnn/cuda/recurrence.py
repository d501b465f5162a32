"""The recurrence on the GPU: LSTM, GRU and RNN steps, forward and backward.

Layout and equations are those of ``fastrnn/lstm.py``, ``gru.py`` and ``rnn.py``
(torch's gate order; tapes hold the same quantities), so the CPU and GPU tapes
mean the same thing. The input projections are one big product per layer
outside these kernels (``linalg.gemm``); what is here is only what is sequential.

Work split. Every block owns a slice of ``nu`` hidden units (all their gates) for
the gate phase, and a slice of ``nu_p`` output features for the phase that
needs whole rows of the previous phase (the projection ``W_hr`` forward, the
recurrent gradient ``dh = da W_hh`` backward). Within a block, each group of
threads computes a few dot products of a batch chunk, split along ``k`` over
``KS`` threads and summed through shared memory; the gate math is fused right
after. The block's slice of the recurrent weights is copied to shared memory
once (when it fits) and read from there at every step.

Two drivers run the same phases:

* ``*_persistent``: one launch for the whole sequence. Blocks stay resident and
  meet at a grid-wide barrier (``cuda.cg.this_grid().sync()``, a cooperative
  launch) after each phase, so there is no launch per step — the latency-bound
  case of small batches, where cuDNN is weakest.
* ``*_phase``: one launch per phase and step. The simulator runs only one-block
  grids cooperatively, so the tests use this driver for multi-block grids; it is
  also the fallback (``Plan(persistent=False)``) where cooperative launches are
  not available. On a GPU, :class:`Plan` uses at most one block per SM, which a
  cooperative launch always fits.

Products accumulate in the arrays' dtype; the per-row partial sums are added in
float64, and the gate math is done in float64 from there (cheap: it is
elementwise, the products are the work).
"""

import math

from numba import cuda

from . import is_simulator

THREADS = 8 if is_simulator() else 256


PRE_CAP = 2048  # float64 pre-activations a block holds at once (16 KB)


SHARED_WEIGHT_BYTES = 24 * 1024  # dynamic shared memory for a block's weight slice


GATES = (4, 3, 1)  # per cell code (LSTM 0, GRU 1, RNN 2: ``fastrnn.cuda.backend.CELL_CODES``)


@cuda.jit(device=True)
def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@cuda.jit(device=True)
def _stage(w, sw32, sw64, smode, n0, nu, G, stride):
    """Copy the weight columns ``g * stride + n0 + u`` (g < G, u < nu) of ``w`` (K, N)
    to shared memory as ``sw[(k * G + g) * nu + u]``; nothing when ``smode == 0``."""
    if smode == 0:
        return
    K = w.shape[0]
    for i in range(cuda.threadIdx.x, K * G * nu, cuda.blockDim.x):
        k, r = i // (G * nu), i % (G * nu)
        g, u = r // nu, r % nu
        v = w[k, g * stride + n0 + u] if n0 + u < stride else 0
        if smode == 1:
            sw32[i] = v
        else:
            sw64[i] = v
    cuda.syncthreads()


@cuda.jit(device=True)
def _products(x, b0, nb, w, sw32, sw64, smode, n0, nu, G, stride, part, pre):
    """``pre[(bl * G + g) * nu + u] = sum_k x[b0 + bl, k] * w[k, g * stride + n0 + u]``
    for bl < nb, g < G, u < nu (columns past ``stride`` give 0).

    The block's threads form ``KS`` groups of ``R``; a group takes R consecutive
    rows (consecutive units: contiguous weight reads), each thread one ``k``
    residue class of a row, and the partial sums meet in ``part``.
    """
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    K = w.shape[0]
    rows = nb * G * nu
    KS = max(1, nt // rows)
    R = nt // KS
    rr, ks = tid % R, tid // R
    for p0 in range(0, rows, R):
        row = p0 + rr
        acc = x[0, 0] * 0
        if ks < KS and row < rows:
            bl, g, u = row // (G * nu), (row // nu) % G, row % nu
            if n0 + u < stride:
                b = b0 + bl
                if smode == 1:
                    for k in range(ks, K, KS):
                        acc += x[b, k] * sw32[(k * G + g) * nu + u]
                elif smode == 2:
                    for k in range(ks, K, KS):
                        acc += x[b, k] * sw64[(k * G + g) * nu + u]
                else:
                    col = g * stride + n0 + u
                    for k in range(ks, K, KS):
                        acc += x[b, k] * w[k, col]
        part[tid] = acc
        cuda.syncthreads()
        if tid < R and p0 + tid < rows:
            total = 0.0
            for q in range(KS):
                total += part[q * R + tid]
            pre[p0 + tid] = total
        cuda.syncthreads()


@cuda.jit(cache=True)
def seed_kernel(dh_out, dh, dy, t, lengths):
    """dh_out = dh + dy[t] on rows running at step ``t`` (the walk's first step)."""
    B, P = dh_out.shape
    for i in range(cuda.grid(1), B * P, cuda.gridsize(1)):
        b, k = i // P, i % P
        dh_out[b, k] = dh[b, k] + (dy[t, b, k] if t < lengths[b] else 0)


class Plan:
    """Grid shape of one recurrence: ``blocks`` blocks own ``nu`` units and ``nu_p``
    output features each; ``persistent`` says whether one cooperative launch runs
    the whole sequence; :meth:`shared` places a block's weight slice."""

    def __init__(self, H, P, G, itemsize, blocks=None, persistent=None):
        if blocks is None:
            if is_simulator():
                blocks = 1
            else:
                blocks = min(cuda.get_current_device().MULTIPROCESSOR_COUNT, H)
        self.blocks = blocks
        self.nu = math.ceil(H / blocks)
        self.nu_p = math.ceil(P / blocks)
        if G * self.nu > PRE_CAP:
            raise ValueError(f"hidden_size {H} too large for {blocks} blocks")
        # persistent: one-block grids in the simulator, at most one block per SM on a GPU
        self.persistent = (blocks == 1 or not is_simulator()) if persistent is None else persistent
        self.itemsize = itemsize

    def shared(self, K, G, nu):
        """``(smode, bytes)`` for a (K x G*nu) weight slice."""
        nbytes = K * G * nu * self.itemsize
        if nbytes > SHARED_WEIGHT_BYTES:
            return 0, 0
        return (1 if self.itemsize == 4 else 2), nbytes
