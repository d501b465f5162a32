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

from numba import cuda, float32, float64

from . import _device, is_simulator

THREADS = 8 if is_simulator() else 256
PRE_CAP = 2048  # float64 pre-activations a block holds at once (16 KB)
SHARED_WEIGHT_BYTES = 24 * 1024  # dynamic shared memory for a block's weight slice
GATES = (4, 3, 1)  # per kind: LSTM, GRU, RNN (the ``kind`` codes of fastrnn.recurrence)
TAPE_GATES = (4, 4, 1)


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


# ----------------------------------------------------------------------------- forward


@cuda.jit(device=True)
def _forward_gates(
    kind,
    mode,
    t,
    gx,
    w_t,
    sw32,
    sw64,
    smode,
    b_ih,
    b_hh,
    h_cur,
    h_next,
    c,
    m,
    y,
    lengths,
    proj,
    tape_gates,
    tape_h,
    tape_c,
    part,
    pre,
    n0,
    nu,
):
    """Gate phase of step ``t`` for units ``n0 .. n0 + nu``: ``h_cur W_hh^T`` (from
    ``w_t`` = W_hh^T), the cell's nonlinearities, ``c`` in place, and either ``m``
    (before the projection) or ``h_next``/``y[t]``. Records the tapes when training."""
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    G = 4 if kind == 0 else (3 if kind == 1 else 1)
    H = b_ih.shape[0] // G
    B = h_cur.shape[0]
    train = tape_h.shape[0] > 0
    Bc = max(1, min(B, PRE_CAP // (G * nu)))
    for b0 in range(0, B, Bc):
        nb = min(Bc, B - b0)
        _products(h_cur, b0, nb, w_t, sw32, sw64, smode, n0, nu, G, H, part, pre)
        for item in range(tid, nb * nu, nt):
            bl, u = item // nu, item % nu
            j, b = n0 + u, b0 + item // nu
            if j >= H:
                continue
            if train:
                if not proj:
                    tape_h[t, b, j] = h_cur[b, j]
                if kind == 0:
                    tape_c[t, b, j] = c[b, j]
            if t >= lengths[b]:  # finished rows keep their state and output zeros
                if not proj:
                    h_next[b, j] = h_cur[b, j]
                    y[t, b, j] = 0
                continue
            base = bl * G * nu + u
            if kind == 0:
                gi = _sigmoid(pre[base] + gx[t, b, j] + b_ih[j] + b_hh[j])
                gf = _sigmoid(pre[base + nu] + gx[t, b, H + j] + b_ih[H + j] + b_hh[H + j])
                gg = math.tanh(
                    pre[base + 2 * nu] + gx[t, b, 2 * H + j] + b_ih[2 * H + j] + b_hh[2 * H + j]
                )
                go = _sigmoid(
                    pre[base + 3 * nu] + gx[t, b, 3 * H + j] + b_ih[3 * H + j] + b_hh[3 * H + j]
                )
                cc = gf * c[b, j] + gi * gg
                c[b, j] = cc
                out = go * math.tanh(cc)
                if train:
                    tape_gates[t, b, j] = gi
                    tape_gates[t, b, H + j] = gf
                    tape_gates[t, b, 2 * H + j] = gg
                    tape_gates[t, b, 3 * H + j] = go
                if proj:
                    m[b, j] = out
                    continue
            elif kind == 1:
                r = _sigmoid(pre[base] + b_hh[j] + gx[t, b, j] + b_ih[j])
                z = _sigmoid(pre[base + nu] + b_hh[H + j] + gx[t, b, H + j] + b_ih[H + j])
                hn = pre[base + 2 * nu] + b_hh[2 * H + j]
                n = math.tanh(gx[t, b, 2 * H + j] + b_ih[2 * H + j] + r * hn)
                out = n + z * (h_cur[b, j] - n)
                if train:
                    tape_gates[t, b, j] = r
                    tape_gates[t, b, H + j] = z
                    tape_gates[t, b, 2 * H + j] = n
                    tape_gates[t, b, 3 * H + j] = hn
            else:
                a = pre[base] + gx[t, b, j] + b_ih[j] + b_hh[j]
                out = math.tanh(a) if mode == 0 else max(a, 0.0)
                if train:
                    tape_gates[t, b, j] = out
            h_next[b, j] = out
            y[t, b, j] = out
        cuda.syncthreads()


@cuda.jit(device=True)
def _forward_project(
    t, w_hr_t, m, h_cur, h_next, y, lengths, tape_h, sw32, sw64, part, pre, n0, nu
):
    """Projection phase of step ``t`` for features ``n0 .. n0 + nu``: ``h = m W_hr^T``."""
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    B, P = h_cur.shape
    train = tape_h.shape[0] > 0
    Bc = max(1, min(B, PRE_CAP // nu))
    for b0 in range(0, B, Bc):
        nb = min(Bc, B - b0)
        _products(m, b0, nb, w_hr_t, sw32, sw64, 0, n0, nu, 1, P, part, pre)
        for item in range(tid, nb * nu, nt):
            p, b = n0 + item % nu, b0 + item // nu
            if p >= P:
                continue
            if train:
                tape_h[t, b, p] = h_cur[b, p]
            if t < lengths[b]:
                h_next[b, p] = pre[item]
                y[t, b, p] = pre[item]
            else:
                h_next[b, p] = h_cur[b, p]
                y[t, b, p] = 0
        cuda.syncthreads()


@cuda.jit(cache=True)
def forward_persistent(
    kind,
    mode,
    gx,
    w_t,
    smode,
    b_ih,
    b_hh,
    w_hr_t,
    h_buf,
    c,
    m,
    y,
    lengths,
    reverse,
    tape_gates,
    tape_h,
    tape_c,
    nu,
    nu_p,
):
    """The whole sequence in one cooperative launch; ``h_buf[0]`` holds the initial
    state and the final one ends in ``h_buf[T % 2]``."""
    part = cuda.shared.array(256, float64)
    pre = cuda.shared.array(2048, float64)
    sw32 = cuda.shared.array(0, float32)
    sw64 = cuda.shared.array(0, float64)
    grid = cuda.cg.this_grid()
    G = 4 if kind == 0 else (3 if kind == 1 else 1)
    H = b_ih.shape[0] // G
    n0, p0 = cuda.blockIdx.x * nu, cuda.blockIdx.x * nu_p
    _stage(w_t, sw32, sw64, smode, n0, nu, G, H)
    T = gx.shape[0]
    proj = w_hr_t.shape[0] > 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        cur = s % 2
        _forward_gates(
            kind,
            mode,
            t,
            gx,
            w_t,
            sw32,
            sw64,
            smode,
            b_ih,
            b_hh,
            h_buf[cur],
            h_buf[1 - cur],
            c,
            m,
            y,
            lengths,
            proj,
            tape_gates,
            tape_h,
            tape_c,
            part,
            pre,
            n0,
            nu,
        )
        grid.sync()
        if proj:
            _forward_project(
                t,
                w_hr_t,
                m,
                h_buf[cur],
                h_buf[1 - cur],
                y,
                lengths,
                tape_h,
                sw32,
                sw64,
                part,
                pre,
                p0,
                nu_p,
            )
            grid.sync()


@cuda.jit(cache=True)
def forward_phase(
    phase,
    s,
    kind,
    mode,
    gx,
    w_t,
    smode,
    b_ih,
    b_hh,
    w_hr_t,
    h_buf,
    c,
    m,
    y,
    lengths,
    reverse,
    tape_gates,
    tape_h,
    tape_c,
    nu,
    nu_p,
):
    """Phase ``phase`` (0: gates, 1: projection) of walk step ``s``, one launch."""
    part = cuda.shared.array(256, float64)
    pre = cuda.shared.array(2048, float64)
    sw32 = cuda.shared.array(0, float32)
    sw64 = cuda.shared.array(0, float64)
    T = gx.shape[0]
    t = T - 1 - s if reverse else s
    cur = s % 2
    if phase == 0:
        G = 4 if kind == 0 else (3 if kind == 1 else 1)
        n0 = cuda.blockIdx.x * nu
        _stage(w_t, sw32, sw64, smode, n0, nu, G, b_ih.shape[0] // G)
        _forward_gates(
            kind,
            mode,
            t,
            gx,
            w_t,
            sw32,
            sw64,
            smode,
            b_ih,
            b_hh,
            h_buf[cur],
            h_buf[1 - cur],
            c,
            m,
            y,
            lengths,
            w_hr_t.shape[0] > 0,
            tape_gates,
            tape_h,
            tape_c,
            part,
            pre,
            n0,
            nu,
        )
    else:
        _forward_project(
            t,
            w_hr_t,
            m,
            h_buf[cur],
            h_buf[1 - cur],
            y,
            lengths,
            tape_h,
            sw32,
            sw64,
            part,
            pre,
            cuda.blockIdx.x * nu_p,
            nu_p,
        )


# ----------------------------------------------------------------------------- backward
#
# Same equations as the CPU backward steps (see lstm.py, gru.py, rnn.py). The walk
# keeps ``dh`` = the gradient reaching h_t (output gradient included) in a
# ping-pong buffer: the gate phase turns it into the gate gradients (and ``dc``
# in place), the hidden phase forms the next ``dh = da W_hh (+ dh * z for GRU)``
# and adds the next step's output gradient.


@cuda.jit(device=True)
def _backward_gates(
    kind,
    mode,
    t,
    gates,
    h_prev,
    c_prev,
    w_hr,
    proj,
    dh_cur,
    dc,
    dgx,
    dgh,
    mt,
    lengths,
    sw32,
    sw64,
    part,
    pre,
    n0,
    nu,
):
    """Gate gradients of step ``t`` for units ``n0 .. n0 + nu`` (``dc`` in place)."""
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    G = 4 if kind == 0 else (3 if kind == 1 else 1)
    H = dgx.shape[2] // G
    B = dh_cur.shape[0]
    Bc = max(1, min(B, PRE_CAP // nu))
    for b0 in range(0, B, Bc):
        nb = min(Bc, B - b0)
        if proj:  # dm = dh W_hr for this block's units
            _products(dh_cur, b0, nb, w_hr, sw32, sw64, 0, n0, nu, 1, H, part, pre)
        for item in range(tid, nb * nu, nt):
            j, b = n0 + item % nu, b0 + item // nu
            if j >= H:
                continue
            if t >= lengths[b]:
                for g in range(G):
                    dgx[t, b, g * H + j] = 0
                    dgh[t, b, g * H + j] = 0
                if proj:
                    mt[t, b, j] = 0
                continue
            if kind == 0:
                dm = pre[item] if proj else dh_cur[b, j]
                gi, gf = gates[t, b, j], gates[t, b, H + j]
                gg, go = gates[t, b, 2 * H + j], gates[t, b, 3 * H + j]
                cp = c_prev[t, b, j]
                tc = math.tanh(gf * cp + gi * gg)
                d = dc[b, j] + dm * go * (1 - tc * tc)
                dgx[t, b, j] = d * gg * gi * (1 - gi)
                dgx[t, b, H + j] = d * cp * gf * (1 - gf)
                dgx[t, b, 2 * H + j] = d * gi * (1 - gg * gg)
                dgx[t, b, 3 * H + j] = dm * tc * go * (1 - go)
                dc[b, j] = d * gf
                if proj:
                    mt[t, b, j] = go * tc
            elif kind == 1:
                d = dh_cur[b, j]
                r, z = gates[t, b, j], gates[t, b, H + j]
                n, hn = gates[t, b, 2 * H + j], gates[t, b, 3 * H + j]
                dan = d * (1 - z) * (1 - n * n)
                dar = dan * hn * r * (1 - r)
                daz = d * (h_prev[t, b, j] - n) * z * (1 - z)
                dgx[t, b, j] = dar
                dgx[t, b, H + j] = daz
                dgx[t, b, 2 * H + j] = dan
                dgh[t, b, j] = dar
                dgh[t, b, H + j] = daz
                dgh[t, b, 2 * H + j] = dan * r
            else:
                d = dh_cur[b, j]
                a = gates[t, b, j]
                if mode == 0:
                    dgx[t, b, j] = d * (1 - a * a)
                else:
                    dgx[t, b, j] = d if a > 0 else 0
        cuda.syncthreads()


@cuda.jit(device=True)
def _backward_hidden(
    kind,
    t,
    t_next,
    w_hh,
    sw32,
    sw64,
    smode,
    gates,
    dgh,
    dy,
    dh_cur,
    dh_next,
    dhp,
    proj,
    lengths,
    part,
    pre,
    n0,
    nu,
):
    """``dh`` entering step ``t`` for features ``n0 .. n0 + nu``, plus the output
    gradient of the next step of the walk (``t_next``, -1 at the end)."""
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    B, P = dh_cur.shape
    H = gates.shape[2] // 4 if kind == 1 else 0
    Bc = max(1, min(B, PRE_CAP // nu))
    for b0 in range(0, B, Bc):
        nb = min(Bc, B - b0)
        _products(dgh[t], b0, nb, w_hh, sw32, sw64, smode, n0, nu, 1, P, part, pre)
        for item in range(tid, nb * nu, nt):
            k, b = n0 + item % nu, b0 + item // nu
            if k >= P:
                continue
            if t < lengths[b]:
                v = pre[item]
                if kind == 1:
                    v += dh_cur[b, k] * gates[t, b, H + k]
                if proj:
                    dhp[t, b, k] = dh_cur[b, k]
            else:
                v = dh_cur[b, k] + 0.0
                if proj:
                    dhp[t, b, k] = 0
            if t_next >= 0 and t_next < lengths[b]:
                v += dy[t_next, b, k]
            dh_next[b, k] = v
        cuda.syncthreads()


@cuda.jit(cache=True)
def backward_persistent(
    kind,
    mode,
    gates,
    h_prev,
    c_prev,
    w_hh,
    smode,
    w_hr,
    proj,
    dy,
    dh_buf,
    dc,
    dgx,
    dgh,
    dhp,
    mt,
    lengths,
    reverse,
    nu,
    nu_p,
):
    """BPTT of one layer-direction in one cooperative launch. ``dh_buf[0]`` enters as the
    final-state gradient plus the last step's output gradient (:func:`seed_kernel`);
    the initial-state gradient ends in ``dh_buf[T % 2]``, ``dc``'s in ``dc``."""
    part = cuda.shared.array(256, float64)
    pre = cuda.shared.array(2048, float64)
    sw32 = cuda.shared.array(0, float32)
    sw64 = cuda.shared.array(0, float64)
    grid = cuda.cg.this_grid()
    n0, p0 = cuda.blockIdx.x * nu, cuda.blockIdx.x * nu_p
    _stage(w_hh, sw32, sw64, smode, p0, nu_p, 1, w_hh.shape[1])
    T = gates.shape[0]
    for s in range(T):
        t = s if reverse else T - 1 - s
        t_next = -1 if s == T - 1 else (s + 1 if reverse else T - 2 - s)
        cur = s % 2
        _backward_gates(
            kind,
            mode,
            t,
            gates,
            h_prev,
            c_prev,
            w_hr,
            proj,
            dh_buf[cur],
            dc,
            dgx,
            dgh,
            mt,
            lengths,
            sw32,
            sw64,
            part,
            pre,
            n0,
            nu,
        )
        grid.sync()
        _backward_hidden(
            kind,
            t,
            t_next,
            w_hh,
            sw32,
            sw64,
            smode,
            gates,
            dgh,
            dy,
            dh_buf[cur],
            dh_buf[1 - cur],
            dhp,
            proj,
            lengths,
            part,
            pre,
            p0,
            nu_p,
        )
        grid.sync()


@cuda.jit(cache=True)
def backward_phase(
    phase,
    s,
    kind,
    mode,
    gates,
    h_prev,
    c_prev,
    w_hh,
    smode,
    w_hr,
    proj,
    dy,
    dh_buf,
    dc,
    dgx,
    dgh,
    dhp,
    mt,
    lengths,
    reverse,
    nu,
    nu_p,
):
    """Phase ``phase`` (0: gates, 1: hidden) of walk step ``s``, one launch."""
    part = cuda.shared.array(256, float64)
    pre = cuda.shared.array(2048, float64)
    sw32 = cuda.shared.array(0, float32)
    sw64 = cuda.shared.array(0, float64)
    T = gates.shape[0]
    t = s if reverse else T - 1 - s
    cur = s % 2
    if phase == 0:
        _backward_gates(
            kind,
            mode,
            t,
            gates,
            h_prev,
            c_prev,
            w_hr,
            proj,
            dh_buf[cur],
            dc,
            dgx,
            dgh,
            mt,
            lengths,
            sw32,
            sw64,
            part,
            pre,
            cuda.blockIdx.x * nu,
            nu,
        )
    else:
        t_next = -1 if s == T - 1 else (s + 1 if reverse else T - 2 - s)
        p0 = cuda.blockIdx.x * nu_p
        _stage(w_hh, sw32, sw64, smode, p0, nu_p, 1, w_hh.shape[1])
        _backward_hidden(
            kind,
            t,
            t_next,
            w_hh,
            sw32,
            sw64,
            smode,
            gates,
            dgh,
            dy,
            dh_buf[cur],
            dh_buf[1 - cur],
            dhp,
            proj,
            lengths,
            part,
            pre,
            p0,
            nu_p,
        )


@cuda.jit(cache=True)
def seed_kernel(dh_out, dh, dy, t, lengths):
    """dh_out = dh + dy[t] on rows running at step ``t`` (the walk's first step)."""
    B, P = dh_out.shape
    for i in range(cuda.grid(1), B * P, cuda.gridsize(1)):
        b, k = i // P, i % P
        dh_out[b, k] = dh[b, k] + (dy[t, b, k] if t < lengths[b] else 0)


# ----------------------------------------------------------------------------- launching


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


def run_forward(
    kind, mode, gx, w_t, b_ih, b_hh, w_hr_t, h_buf, c, m, y, lengths, reverse, tapes, plan
):
    """Launch the forward recurrence (see :func:`forward_persistent`)."""
    G = GATES[kind]
    smode, nbytes = plan.shared(w_t.shape[0], G, plan.nu)
    args = (
        kind,
        mode,
        gx,
        w_t,
        smode,
        b_ih,
        b_hh,
        w_hr_t,
        h_buf,
        c,
        m,
        y,
        lengths,
        reverse,
        *tapes,
        plan.nu,
        plan.nu_p,
    )
    if plan.persistent:
        _device.launch(forward_persistent, plan.blocks, THREADS, *args, shared_bytes=nbytes)
        return
    proj = w_hr_t.shape[0] > 0
    for s in range(gx.shape[0]):
        _device.launch(forward_phase, plan.blocks, THREADS, 0, s, *args, shared_bytes=nbytes)
        if proj:
            _device.launch(forward_phase, plan.blocks, THREADS, 1, s, *args)


def run_backward(
    kind,
    mode,
    gates,
    h_prev,
    c_prev,
    w_hh,
    w_hr,
    proj,
    dy,
    dh_buf,
    dc,
    dgx,
    dgh,
    dhp,
    mt,
    lengths,
    reverse,
    plan,
):
    """Launch BPTT through one recurrence (see :func:`backward_persistent`)."""
    smode, nbytes = plan.shared(w_hh.shape[0], 1, plan.nu_p)
    args = (
        kind,
        mode,
        gates,
        h_prev,
        c_prev,
        w_hh,
        smode,
        w_hr,
        proj,
        dy,
        dh_buf,
        dc,
        dgx,
        dgh,
        dhp,
        mt,
        lengths,
        reverse,
        plan.nu,
        plan.nu_p,
    )
    if plan.persistent:
        _device.launch(backward_persistent, plan.blocks, THREADS, *args, shared_bytes=nbytes)
        return
    for s in range(gates.shape[0]):
        _device.launch(backward_phase, plan.blocks, THREADS, 0, s, *args)
        _device.launch(backward_phase, plan.blocks, THREADS, 1, s, *args, shared_bytes=nbytes)
