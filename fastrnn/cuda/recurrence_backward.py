"""BPTT on the GPU (see :mod:`fastrnn.cuda.recurrence` for the work split): the gate
gradients, the recurrent gradient ``dh = da W_hh``, and their two drivers."""

import math

from numba import cuda, float32, float64

from . import _device, recurrence
from .recurrence import _products, _stage


@cuda.jit(device=True)
def _backward_gates(
    cell,
    activation,
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
    G = 4 if cell == 0 else (3 if cell == 1 else 1)
    H = dgx.shape[2] // G
    B = dh_cur.shape[0]
    Bc = max(1, min(B, recurrence.PRE_CAP // nu))
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
            if cell == 0:
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
            elif cell == 1:
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
                if activation == 0:
                    dgx[t, b, j] = d * (1 - a * a)
                else:
                    dgx[t, b, j] = d if a > 0 else 0
        cuda.syncthreads()


@cuda.jit(device=True)
def _backward_hidden(
    cell,
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
    H = gates.shape[2] // 4 if cell == 1 else 0
    Bc = max(1, min(B, recurrence.PRE_CAP // nu))
    for b0 in range(0, B, Bc):
        nb = min(Bc, B - b0)
        _products(dgh[t], b0, nb, w_hh, sw32, sw64, smode, n0, nu, 1, P, part, pre)
        for item in range(tid, nb * nu, nt):
            k, b = n0 + item % nu, b0 + item // nu
            if k >= P:
                continue
            if t < lengths[b]:
                v = pre[item]
                if cell == 1:
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
    cell,
    activation,
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
            cell,
            activation,
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
            cell,
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
    cell,
    activation,
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
            cell,
            activation,
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
            cell,
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


def run_backward(
    *,
    cell,
    activation,
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
        cell,
        activation,
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
        _device.launch(
            backward_persistent, plan.blocks, recurrence.THREADS, *args, shared_bytes=nbytes
        )
        return
    for s in range(gates.shape[0]):
        _device.launch(backward_phase, plan.blocks, recurrence.THREADS, 0, s, *args)
        _device.launch(
            backward_phase, plan.blocks, recurrence.THREADS, 1, s, *args, shared_bytes=nbytes
        )
