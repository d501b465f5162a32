"""The forward recurrence on the GPU (see :mod:`fastrnn.cuda.recurrence` for the work
split): the gate phase, the projection phase, and their two drivers."""

import math

from numba import cuda, float32, float64

from . import _device, recurrence
from .recurrence import _products, _sigmoid, _stage


@cuda.jit(device=True)
def _forward_gates(
    cell,
    activation,
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
    G = 4 if cell == 0 else (3 if cell == 1 else 1)
    H = b_ih.shape[0] // G
    B = h_cur.shape[0]
    train = tape_h.shape[0] > 0
    Bc = max(1, min(B, recurrence.PRE_CAP // (G * nu)))
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
                if cell == 0:
                    tape_c[t, b, j] = c[b, j]
            if t >= lengths[b]:  # finished rows keep their state and output zeros
                if not proj:
                    h_next[b, j] = h_cur[b, j]
                    y[t, b, j] = 0
                continue
            base = bl * G * nu + u
            if cell == 0:
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
            elif cell == 1:
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
                out = math.tanh(a) if activation == 0 else max(a, 0.0)
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
    Bc = max(1, min(B, recurrence.PRE_CAP // nu))
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
    cell,
    activation,
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
    G = 4 if cell == 0 else (3 if cell == 1 else 1)
    H = b_ih.shape[0] // G
    n0, p0 = cuda.blockIdx.x * nu, cuda.blockIdx.x * nu_p
    _stage(w_t, sw32, sw64, smode, n0, nu, G, H)
    T = gx.shape[0]
    proj = w_hr_t.shape[0] > 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        cur = s % 2
        _forward_gates(
            cell,
            activation,
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
    cell,
    activation,
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
        G = 4 if cell == 0 else (3 if cell == 1 else 1)
        n0 = cuda.blockIdx.x * nu
        _stage(w_t, sw32, sw64, smode, n0, nu, G, b_ih.shape[0] // G)
        _forward_gates(
            cell,
            activation,
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


def run_forward(
    *, cell, activation, gx, w_t, b_ih, b_hh, w_hr_t, h_buf, c, m, y, lengths, reverse, tapes, plan
):
    """Launch the forward recurrence (see :func:`forward_persistent`)."""
    G = recurrence.GATES[cell]
    smode, nbytes = plan.shared(w_t.shape[0], G, plan.nu)
    args = (
        cell,
        activation,
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
        _device.launch(
            forward_persistent, plan.blocks, recurrence.THREADS, *args, shared_bytes=nbytes
        )
        return
    proj = w_hr_t.shape[0] > 0
    for s in range(gx.shape[0]):
        _device.launch(
            forward_phase, plan.blocks, recurrence.THREADS, 0, s, *args, shared_bytes=nbytes
        )
        if proj:
            _device.launch(forward_phase, plan.blocks, recurrence.THREADS, 1, s, *args)
