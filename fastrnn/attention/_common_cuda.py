"""What the CUDA scoring rules share: row kernels (softmax, sums), argument checks
and masks on the device."""

import math

import numpy as np
from numba import cuda

from .. import _validation as check
from ..cuda import _device, linalg

THREADS = linalg.THREADS


def _blocks(n):
    return linalg.blocks(n)


@cuda.jit(cache=True)
def _softmax_kernel(S, madd, mbool, causal, scale, B1, q0, lse, from_lse):
    """Rows of the score block ``S`` (N, r, Lk) for query rows q0.. -> probabilities, in
    place. Scores are scaled and masked (``madd``/``mbool`` (B0, B1, Lq, Lk) or empty;
    masked = -inf). ``from_lse``: use the saved log-sum-exp; else compute and save it
    (-inf and a zero row when everything is masked)."""
    N, R, Lk = S.shape
    has_add, has_bool = madd.shape[0] > 0, mbool.shape[0] > 0
    for idx in range(cuda.grid(1), N * R, cuda.gridsize(1)):
        n, r = idx // R, idx % R
        i = q0 + r
        b0, b1 = n // B1, n % B1
        m = -math.inf
        for j in range(Lk):
            s = S[n, r, j] * scale
            if has_add:
                s += madd[b0, b1, i, j]
            if (has_bool and not mbool[b0, b1, i, j]) or (causal and j > i):
                s = -math.inf
            S[n, r, j] = s
            m = max(m, S[n, r, j])  # the stored (rounded) score: see the CPU kernel
        if from_lse:
            L = lse[n, i]
            for j in range(Lk):
                S[n, r, j] = 0 if L == -math.inf else math.exp(min(S[n, r, j] - L, 0.0))
            continue
        if m == -math.inf:
            for j in range(Lk):
                S[n, r, j] = 0
            lse[n, i] = -math.inf
            continue
        total = 0.0
        for j in range(Lk):
            e = math.exp(S[n, r, j] - m)
            S[n, r, j] = e
            total += e
        for j in range(Lk):
            S[n, r, j] = S[n, r, j] / total
        lse[n, i] = m + math.log(total)


@cuda.jit(cache=True)
def _dscores_kernel(P, dP, dO, O, scale):
    """dS = P * (dP - rowsum(dO * O)) * scale, into dP (rows of (N, r, ·) arrays)."""
    N, R, Lk = P.shape
    for idx in range(cuda.grid(1), N * R, cuda.gridsize(1)):
        n, r = idx // R, idx % R
        big_d = 0.0
        for t in range(O.shape[2]):
            big_d += O[n, r, t] * dO[n, r, t]
        for j in range(Lk):
            dP[n, r, j] = P[n, r, j] * (dP[n, r, j] - big_d) * scale


@cuda.jit(cache=True)
def _sum_axis1_kernel(a, out):
    """out[b, h] = sum_j a[b, j, h]."""
    B, L, H = a.shape
    for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
        b, h = idx // H, idx % H
        acc = 0.0
        for j in range(L):
            acc += a[b, j, h]
        out[b, h] = acc


@cuda.jit(cache=True)
def _add_row_kernel(a, row):
    """a[i, j] += row[j]."""
    M, N = a.shape
    for idx in range(cuda.grid(1), M * N, cuda.gridsize(1)):
        a[idx // N, idx % N] += row[idx % N]


def _launch_rows(kernel, n, *args):
    _device.launch(kernel, _blocks(n), THREADS, *args)


def _inputs(names, arrays, dtype=None):
    """Device arrays of one float dtype (host arrays are copied over)."""
    out = []
    for name, a in zip(names, arrays):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{name} must be an array; got {type(a).__name__}")
        dt = np.dtype(a.dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"{name} must have dtype float32 or float64; got {dt}")
        dtype = dtype or dt
        out.append(check.device_array(name, a, dtype, "(...)", f"like {names[0]}"))
    return out


def _host(a):
    if a is None or isinstance(a, np.ndarray):
        return a
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    from ..cuda import as_device_array

    return as_device_array(a).copy_to_host()


def _device_masks(madd, mbool):
    return (
        _device.to_device(np.ascontiguousarray(madd)),
        _device.to_device(np.ascontiguousarray(mbool)),
    )


def _softmax(S, p, q0, lse, from_lse):
    N, R, _ = S.shape
    dt = np.dtype(S.dtype).type
    _launch_rows(
        _softmax_kernel,
        N * R,
        S,
        p["madd"],
        p["mbool"],
        p["causal"],
        dt(p["scale"]),
        p["B1"],
        q0,
        lse,
        from_lse,
    )


def _softmax_rows(scores):
    """Softmax over the last axis of (B, 1, L) scores in place (-inf entries -> 0)."""
    B, _, L = scores.shape
    dt = np.dtype(scores.dtype)
    lse = _device.empty((B, 1), dt)
    none_f = _device.empty((0, 0, 0, 0), dt)
    none_b = _device.empty((0, 0, 0, 0), np.bool_)
    _launch_rows(_softmax_kernel, B, scores, none_f, none_b, False, dt.type(1), 1, 0, lse, False)
    return scores


def _softmax_backward(w, dw):
    """dscore = w * (dw - sum(w * dw)) for (B, 1, L) rows; overwrites ``dw``."""
    B = w.shape[0]
    _launch_rows(_dscores_kernel, B, w, dw, dw, w, np.dtype(w.dtype).type(1))
    return dw
