"""Attention on device arrays: the GPU twin of :mod:`fastrnn.attention`.

Same functions, arguments, masks and tapes as the CPU module (which sends device
inputs here). The products — ``Q Kᵀ``, ``P V`` and their gradients, the key and
query projections — are batched device products (``linalg.gemm``, cuBLAS from
the bridge); softmax, masking and the additive score are row kernels. Like the
CPU engine, training keeps the output and each row's log-sum-exp and the
backward pass recomputes the probabilities.

Inputs must already share their leading dimensions (no broadcasting of q/k/v
on the device); a mask is broadcast on the host and copied over once.
"""

import math

import numpy as np
from numba import cuda

from .. import _validation as check
from .. import attention as cpu
from .._device_inputs import array as _array
from . import _device, linalg

THREADS = linalg.THREADS


def _blocks(n):
    return linalg.blocks(n)


# ----------------------------------------------------------------------------- kernels


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
def _additive_scores_kernel(pq, pk, bias, vvec, mbool, scores):
    """scores[b, 0, j] = v · tanh(pq_b + pk_bj + bias), -inf where ``mbool`` is False."""
    B, L, H = pk.shape
    for idx in range(cuda.grid(1), B * L, cuda.gridsize(1)):
        b, j = idx // L, idx % L
        if mbool.shape[0] > 0 and not mbool[b, j]:
            scores[b, 0, j] = -math.inf
            continue
        acc = 0.0
        for h in range(H):
            acc += vvec[h] * math.tanh(pq[b, h] + pk[b, j, h] + bias[h])
        scores[b, 0, j] = acc


@cuda.jit(cache=True)
def _additive_da_kernel(pq, pk, bias, vvec, dscore, da):
    """da[b, j, h] = dscore[b, 0, j] * v_h * (1 - tanh(pq_bh + pk_bjh + bias_h)^2)."""
    B, L, H = pk.shape
    for idx in range(cuda.grid(1), B * L * H, cuda.gridsize(1)):
        b, r = idx // (L * H), idx % (L * H)
        j, h = r // H, r % H
        e = math.tanh(pq[b, h] + pk[b, j, h] + bias[h])
        da[b, j, h] = dscore[b, 0, j] * vvec[h] * (1 - e * e)


@cuda.jit(cache=True)
def _additive_dv_kernel(pq, pk, bias, dscore, dv):
    """dv[h] = sum_bj dscore[b, 0, j] * tanh(pq_bh + pk_bjh + bias_h)."""
    B, L, H = pk.shape
    for h in range(cuda.grid(1), H, cuda.gridsize(1)):
        acc = 0.0
        for b in range(B):
            for j in range(L):
                acc += dscore[b, 0, j] * math.tanh(pq[b, h] + pk[b, j, h] + bias[h])
        dv[h] = acc


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


# ----------------------------------------------------------------------------- helpers


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
        out.append(_array(name, a, dtype, "(...)", f"like {names[0]}"))
    return out


def _host(a):
    if a is None or isinstance(a, np.ndarray):
        return a
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    from . import as_device_array

    return as_device_array(a).copy_to_host()


def _device_masks(madd, mbool):
    return (
        _device.to_device(np.ascontiguousarray(madd)),
        _device.to_device(np.ascontiguousarray(mbool)),
    )


# ----------------------------------------------------------------------------- scaled dot product


def _sdpa_prepare(q, k, v, mask, causal, scale):
    q, k, v = _inputs(("query", "key", "value"), (q, k, v))
    cpu._sdpa_shapes(q, k, v)
    nq, nk, nv = q.ndim, k.ndim, v.ndim
    batch = tuple(q.shape[: nq - 2])
    if tuple(k.shape[: nk - 2]) != batch or tuple(v.shape[: nv - 2]) != batch:
        raise ValueError(
            f"on the GPU, query {q.shape}, key {k.shape} and value {v.shape} "
            f"must have the same leading dimensions (no broadcasting)"
        )
    Lq, d = q.shape[nq - 2 :]
    Lk, dv = v.shape[nv - 2 :]
    N = int(np.prod(batch, dtype=np.int64))
    B1 = batch[-1] if batch else 1
    B0 = N // B1 if B1 else 0
    madd, mbool = cpu._mask4(_host(mask), batch, Lq, Lk, B0, B1, np.dtype(q.dtype))
    madd, mbool = _device_masks(madd, mbool)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    return dict(
        q=linalg.reshaped(q, (N, Lq, d)),
        k=linalg.reshaped(k, (N, Lk, d)),
        v=linalg.reshaped(v, (N, Lk, dv)),
        madd=madd,
        mbool=mbool,
        causal=bool(causal),
        scale=scale,
        B1=max(B1, 1),
        batch=batch,
        device=True,
    )


def _row_blocks(p):
    N, Lq, _ = p["q"].shape
    Lk = p["k"].shape[1]
    rows = max(1, min(Lq, cpu.BLOCK_ELEMS // max(1, N * Lk)))
    return [(q0, min(Lq, q0 + rows)) for q0 in range(0, Lq, rows)]


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


def _sdpa_run(p, probs=False):
    """Per block of query rows: S = Q Kᵀ, masked softmax, O = P V. ``probs``: keep
    every row's probabilities (one block over all rows)."""
    q, k, v = p["q"], p["k"], p["v"]
    N, Lq, _ = q.shape
    Lk, dv = v.shape[1:]
    dt = q.dtype
    out = _device.empty((N, Lq, dv), dt)
    lse = _device.empty((N, Lq), dt)
    blocks = [(0, Lq)] if probs else _row_blocks(p)
    S = _device.empty((N, blocks[0][1] - blocks[0][0], Lk), dt)
    for q0, q1 in blocks:
        Sb = S[:, : q1 - q0]
        linalg.gemm(q[:, q0:q1], k, Sb, trans_b=True)
        _softmax(Sb, p, q0, lse, False)
        linalg.gemm(Sb, v, out[:, q0:q1])
    return out, lse, (S if probs else None)


def scaled_dot_product(q, k, v, mask=None, causal=False, scale=None):
    """:func:`fastrnn.attention.scaled_dot_product` on device arrays."""
    p = _sdpa_prepare(q, k, v, mask, causal, scale)
    out, _, _ = _sdpa_run(p)
    return out.reshape(p["batch"] + tuple(out.shape[1:]))


def scaled_dot_product_train(q, k, v, mask=None, causal=False, scale=None):
    """:func:`fastrnn.attention.scaled_dot_product_train` on device arrays."""
    p = _sdpa_prepare(q, k, v, mask, causal, scale)
    out, lse, _ = _sdpa_run(p)
    p.update(out=out, lse=lse)
    return out.reshape(p["batch"] + tuple(out.shape[1:])), cpu.AttentionTape("sdpa", p)


def scaled_dot_product_backward(tape, grad_out):
    """:func:`fastrnn.attention.scaled_dot_product_backward` for a device tape."""
    p = cpu._tape(tape, "sdpa")
    out = p["out"]
    dt = np.dtype(out.dtype)
    (grad_out,) = _inputs(("grad_out",), (grad_out,), dt)
    check.shape("grad_out", grad_out, p["batch"] + tuple(out.shape[1:]))
    do_all = linalg.reshaped(grad_out, out.shape)
    q, k, v = p["q"], p["k"], p["v"]
    N, Lq, _ = q.shape
    Lk = k.shape[1]
    dq = _device.empty(q.shape, dt)
    dk = _device.empty(k.shape, dt)
    dv = _device.empty(v.shape, dt)
    blocks = _row_blocks(p)
    S = _device.empty((N, blocks[0][1] - blocks[0][0], Lk), dt)
    dP = _device.empty(S.shape, dt)
    for q0, q1 in blocks:  # recompute P from Q, K and the saved log-sum-exp
        Sb, dPb = S[:, : q1 - q0], dP[:, : q1 - q0]
        linalg.gemm(q[:, q0:q1], k, Sb, trans_b=True)
        _softmax(Sb, p, q0, p["lse"], True)
        do = do_all[:, q0:q1]
        first = 0.0 if q0 == 0 else 1.0
        linalg.gemm(Sb, do, dv, beta=first, trans_a=True)
        linalg.gemm(do, v, dPb, trans_b=True)
        _launch_rows(
            _dscores_kernel, N * (q1 - q0), Sb, dPb, do, out[:, q0:q1], dt.type(p["scale"])
        )
        linalg.gemm(dPb, k, dq[:, q0:q1])
        linalg.gemm(dPb, q[:, q0:q1], dk, beta=first, trans_a=True)
    batch = p["batch"]
    return tuple(g.reshape(batch + tuple(g.shape[1:])) for g in (dq, dk, dv))


# ----------------------------------------------------------------------------- additive


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


def _additive_prepare(query, keys, values, W_q, W_k, v, bias, mask):
    query, keys, values, W_q, W_k, v = _inputs(
        ("query", "keys", "values", "W_q", "W_k", "v"), (query, keys, values, W_q, W_k, v)
    )
    B, L, H = cpu._additive_shapes(query, keys, values, W_q, W_k, v)
    ks = keys.shape[2]
    dt = np.dtype(query.dtype)
    if bias is None:
        bias = linalg.zeros((H,), dt)
    else:
        (bias,) = _inputs(("bias",), (bias,), dt)
    check.shape("bias", bias, (H,))
    mb = _device.empty((0, 0), np.bool_)
    if mask is not None:
        mask = _host(mask)
        if mask.shape != (B, L):
            raise ValueError(f"mask must have shape ({B}, {L}) (True = attend); got {mask.shape}")
        mb = _device.to_device(np.ascontiguousarray(mask != 0))
    pq = linalg.gemm(query, W_q, _device.empty((B, H), dt), trans_b=True)
    keys2 = linalg.reshaped(keys, (B * L, ks))
    pk = linalg.gemm(keys2, W_k, _device.empty((B * L, H), dt), trans_b=True)
    return dict(
        query=query,
        keys2=keys2,
        keys_shape=tuple(keys.shape),
        values=linalg.reshaped(values, values.shape),
        W_q=W_q,
        W_k=W_k,
        v=v,
        bias=bias,
        mask=mb,
        pq=pq,
        pk=pk.reshape((B, L, H)),
        device=True,
    )


def _additive_run(p):
    B, L, _ = p["pk"].shape
    dt = np.dtype(p["pq"].dtype)
    w = _device.empty((B, 1, L), dt)
    _launch_rows(_additive_scores_kernel, B * L, p["pq"], p["pk"], p["bias"], p["v"], p["mask"], w)
    _softmax_rows(w)
    dv = p["values"].shape[2]
    context = _device.empty((B, 1, dv), dt)
    linalg.gemm(w, p["values"], context)
    return context.reshape((B, dv)), w


def additive(query, keys, values, W_q, W_k, v, mask=None):
    """:func:`fastrnn.attention.additive` on device arrays."""
    context, w = _additive_run(_additive_prepare(query, keys, values, W_q, W_k, v, None, mask))
    return context, w.reshape((w.shape[0], w.shape[2]))


def additive_train(query, keys, values, W_q, W_k, v, mask=None, bias=None):
    """:func:`fastrnn.attention.additive_train` on device arrays."""
    p = _additive_prepare(query, keys, values, W_q, W_k, v, bias, mask)
    context, w = _additive_run(p)
    p["weights"] = w
    return context, w.reshape((w.shape[0], w.shape[2])), cpu.AttentionTape("additive", p)


def additive_backward(tape, grad_context, grad_weights=None):
    """:func:`fastrnn.attention.additive_backward` for a device tape."""
    p = cpu._tape(tape, "additive")
    w, values = p["weights"], p["values"]
    B, _, L = w.shape
    V = values.shape[2]
    H = p["v"].shape[0]
    dt = np.dtype(w.dtype)
    (gc,) = _inputs(("grad_context",), (grad_context,), dt)
    check.shape("grad_context", gc, (B, V))
    gc3 = linalg.reshaped(gc, (B, 1, V))
    dw = linalg.gemm(gc3, values, _device.empty((B, 1, L), dt), trans_b=True)
    if grad_weights is not None:
        (gw,) = _inputs(("grad_weights",), (grad_weights,), dt)
        check.shape("grad_weights", gw, (B, L))
        linalg.add_into(dw, linalg.reshaped(gw, (B, 1, L)))
    dvalues = linalg.gemm(w, gc3, _device.empty((B, L, V), dt), trans_a=True)
    dscore = _softmax_backward(w, dw)
    da = _device.empty((B, L, H), dt)
    _launch_rows(_additive_da_kernel, B * L * H, p["pq"], p["pk"], p["bias"], p["v"], dscore, da)
    dvvec = _device.empty((H,), dt)
    _launch_rows(_additive_dv_kernel, H, p["pq"], p["pk"], p["bias"], dscore, dvvec)
    dpq = _device.empty((B, H), dt)
    _launch_rows(_sum_axis1_kernel, B * H, da, dpq)
    da2 = da.reshape((B * L, H))
    ks = p["W_k"].shape[1]
    return dict(
        query=linalg.gemm(dpq, p["W_q"], _device.empty((B, p["W_q"].shape[1]), dt)),
        keys=linalg.gemm(da2, p["W_k"], _device.empty((B * L, ks), dt)).reshape(p["keys_shape"]),
        values=dvalues,
        W_q=linalg.gemm(dpq, p["query"], _device.empty(p["W_q"].shape, dt), trans_a=True),
        W_k=linalg.gemm(da2, p["keys2"], _device.empty(p["W_k"].shape, dt), trans_a=True),
        v=dvvec,
        bias=linalg.column_sum(da2, _device.empty((H,), dt)),
    )


# ----------------------------------------------------------------------------- Luong


def luong_train(query, keys, values=None, method="dot", weights=None, mask=None):
    """:func:`fastrnn.attention.luong_train` on device arrays."""
    values = keys if values is None else values
    query, keys, values = _inputs(("query", "keys", "values"), (query, keys, values))
    cpu._luong_shapes(query, keys)
    B, H = query.shape
    dt = np.dtype(query.dtype)
    params = cpu._luong_weights(method, weights, H)
    if method == "concat":
        W, b, v = params
        (W,) = _inputs(("weights[0] (W)",), (W,), dt)
        ctx, w, tape = additive_train(query, keys, values, W[:, :H], W[:, H:], v, mask, b)
        return ctx, w, cpu.AttentionTape("luong", dict(method=method, inner=tape, H=H, device=True))
    if method == "general":
        W, b = params
        (W,) = _inputs(("weights[0] (W)",), (W,), dt)
        params = (W, b)
        qq = linalg.gemm(query, W, _device.empty((B, H), dt))  # q · (W k + b) = (Wᵀq) · k + c
    else:
        qq = query
    mask3 = None
    if mask is not None:
        mask3 = _host(mask)
        if mask3.shape != (B, keys.shape[1]):
            raise ValueError(f"mask must have shape {(B, keys.shape[1])}; got {mask3.shape}")
        mask3 = mask3[:, None, :]
    p = _sdpa_prepare(linalg.reshaped(qq, (B, 1, H)), keys, values, mask3, False, 1.0)
    out, lse, probs = _sdpa_run(p, probs=True)
    p.update(out=out, lse=lse)
    saved = dict(
        method=method,
        inner=cpu.AttentionTape("sdpa", p),
        H=H,
        query=query,
        params=params,
        qq=qq,
        probs=probs,
        device=True,
    )
    L = keys.shape[1]
    return out.reshape((B, out.shape[2])), probs.reshape((B, L)), cpu.AttentionTape("luong", saved)


def luong(query, keys, values=None, method="dot", weights=None, mask=None):
    """:func:`fastrnn.attention.luong` on device arrays."""
    ctx, w, _ = luong_train(query, keys, values, method, weights, mask)
    return ctx, w


def luong_backward(tape, grad_context, grad_weights=None):
    """:func:`fastrnn.attention.luong_backward` for a device tape."""
    s = cpu._tape(tape, "luong")
    if s["method"] == "concat":
        g = additive_backward(s["inner"], grad_context, grad_weights)
        H = s["H"]
        W = _device.empty((H, 2 * H), g["W_q"].dtype)
        linalg.copy(g["W_q"], W[:, :H])
        linalg.copy(g["W_k"], W[:, H:])
        return dict(
            query=g["query"], keys=g["keys"], values=g["values"], W=W, b=g["bias"], v=g["v"]
        )
    p = s["inner"].saved
    out = p["out"]
    B, _, V = out.shape
    dt = np.dtype(out.dtype)
    (gc,) = _inputs(("grad_context",), (grad_context,), dt)
    check.shape("grad_context", gc, (B, V))
    dqq, dk, dv = scaled_dot_product_backward(s["inner"], linalg.reshaped(gc, (B, 1, V)))
    if grad_weights is not None:  # through the returned weights: softmax backward
        w = s["probs"]
        L = w.shape[2]
        (gw,) = _inputs(("grad_weights",), (grad_weights,), dt)
        check.shape("grad_weights", gw, (B, L))
        dscore = _softmax_backward(w, linalg.copy(linalg.reshaped(gw, (B, 1, L))))
        linalg.gemm(dscore, p["k"], dqq, beta=1.0)
        linalg.gemm(dscore, linalg.reshaped(s["qq"], (B, 1, s["H"])), dk, beta=1.0, trans_a=True)
    dqq = dqq.reshape((B, s["H"]))
    result = dict(keys=dk, values=dv)
    if s["method"] == "dot":
        result["query"] = dqq
        return result
    W, b = s["params"]
    result["query"] = linalg.gemm(dqq, W, _device.empty((B, s["H"]), dt), trans_b=True)
    result["W"] = linalg.gemm(s["query"], dqq, _device.empty(W.shape, dt), trans_a=True)
    if b is not None:
        result["b"] = linalg.zeros((s["H"],), dt)  # q · b is constant over keys
    return result


# ----------------------------------------------------------------------------- tutorial Attn


def _concat_columns(a, b):
    """[a, b] along axis 1 for 2-D device arrays."""
    out = _device.empty((a.shape[0], a.shape[1] + b.shape[1]), a.dtype)
    linalg.copy(a, out[:, : a.shape[1]])
    linalg.copy(b, out[:, a.shape[1] :])
    return out


def concat_attn_train(Q, K, V, W_attn, b_attn, W_combine, b_combine):
    """:func:`fastrnn.attention.concat_attn_train` on device arrays."""
    Q, K, V, W_attn, b_attn, W_combine, b_combine = _inputs(
        ("Q", "K", "V", "W_attn", "b_attn", "W_combine", "b_combine"),
        (Q, K, V, W_attn, b_attn, W_combine, b_combine),
    )
    B, qs, L, vs2 = cpu._concat_attn_shapes(Q, K, V, W_attn, b_attn, W_combine, b_combine)
    dt = np.dtype(Q.dtype)
    x = _concat_columns(Q[0], K[0])  # (B, qs + ks)
    w = linalg.gemm(x, W_attn, _device.empty((B, L), dt), trans_b=True)
    _launch_rows(_add_row_kernel, B * L, w, b_attn)
    w = _softmax_rows(w.reshape((B, 1, L)))
    applied = linalg.gemm(w, linalg.reshaped(V, V.shape), _device.empty((B, 1, vs2), dt))
    z = _concat_columns(Q[0], applied.reshape((B, vs2)))
    out = linalg.gemm(z, W_combine, _device.empty((B, W_combine.shape[0]), dt), trans_b=True)
    _launch_rows(_add_row_kernel, out.size, out, b_combine)
    saved = dict(
        V=linalg.reshaped(V, V.shape),
        x=x,
        w=w,
        z=z,
        W_attn=W_attn,
        W_combine=W_combine,
        qs=qs,
        device=True,
    )
    return (
        out.reshape((1,) + tuple(out.shape)),
        w.reshape((B, L)),
        cpu.AttentionTape("concat_attn", saved),
    )


def concat_attn(Q, K, V, W_attn, b_attn, W_combine, b_combine):
    """:func:`fastrnn.attention.concat_attn` on device arrays."""
    out, w, _ = concat_attn_train(Q, K, V, W_attn, b_attn, W_combine, b_combine)
    return out, w


def concat_attn_backward(tape, grad_output, grad_weights=None):
    """:func:`fastrnn.attention.concat_attn_backward` for a device tape."""
    s = cpu._tape(tape, "concat_attn")
    w, z, V = s["w"], s["z"], s["V"]
    B, _, L = w.shape
    vs2 = V.shape[2]
    qs = s["qs"]
    dt = np.dtype(w.dtype)
    (go,) = _inputs(("grad_output",), (grad_output,), dt)
    check.shape("grad_output", go, (1, B, s["W_combine"].shape[0]))
    go = go.reshape(tuple(go.shape[1:]))
    dz = linalg.gemm(go, s["W_combine"], _device.empty(z.shape, dt))
    dapplied = linalg.copy(dz[:, qs:]).reshape((B, 1, vs2))
    dw = linalg.gemm(dapplied, V, _device.empty((B, 1, L), dt), trans_b=True)
    if grad_weights is not None:
        (gw,) = _inputs(("grad_weights",), (grad_weights,), dt)
        check.shape("grad_weights", gw, (B, L))
        linalg.add_into(dw, linalg.reshaped(gw, (B, 1, L)))
    dV = linalg.gemm(w, dapplied, _device.empty(V.shape, dt), trans_a=True)
    dlogits = _softmax_backward(w, dw).reshape((B, L))
    dx = linalg.gemm(dlogits, s["W_attn"], _device.empty(s["x"].shape, dt))
    dQ = linalg.add_into(linalg.copy(dz[:, :qs]), dx[:, :qs])
    dK = linalg.copy(dx[:, qs:])
    return dict(
        Q=dQ.reshape((1, B, qs)),
        K=dK.reshape((1,) + tuple(dK.shape)),
        V=dV,
        W_attn=linalg.gemm(dlogits, s["x"], _device.empty(s["W_attn"].shape, dt), trans_a=True),
        b_attn=linalg.column_sum(dlogits, _device.empty((L,), dt)),
        W_combine=linalg.gemm(go, z, _device.empty(s["W_combine"].shape, dt), trans_a=True),
        b_combine=linalg.column_sum(go, _device.empty((go.shape[1],), dt)),
    )
