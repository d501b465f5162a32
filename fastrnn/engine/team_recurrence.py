"""An inference recurrence of a few rows on a team of threads split by hidden units."""

import numpy as np

from .. import pairs, recurrence, team, threads
from ..linalg import gate_columns
from ..tiles import pack_tiles, tile_width
from . import cpu
from .projection import Projection, pairs_pay

#: Fewest hidden units a team member owns, fewest multiply-adds per step and row (of
#: ``h W_hh^T``) for a small batch to go to a team, and fewest over the whole sequence:
#: below, starting the team (waking a core, packing each member's weights and computing
#: its input projection, 400-600 us here) costs more than the split saves. An H=256
#: LSTM (262 k per step) or GRU (197 k) at T=100 ran 1.2x faster on two threads than
#: on one in ``fastrnn bench``'s pattern (calls after idle gaps, torch and onnxruntime
#: between) once the members were held on CPUs of their own (``fastrnn.team``); an
#: H=256 RNN (66 k) is faster on one thread.
TEAM_MIN_UNITS = 64
TEAM_MIN_WORK = 1 << 17
TEAM_MIN_SEQUENCE = 1 << 24

#: (first unit, role) -> array: the team members' packed slices, reused from call to
#: call (a page fault per 4 KB of fresh memory: 130-240 us for an H=256 LSTM's slice
#: here). Only the running team (one at a time) touches them.
_TEAM_BUFFERS = {}


def team_buffer(start, role, shape, dtype):
    found = _TEAM_BUFFERS.get((start, role))
    if found is None or found.shape != shape or found.dtype != dtype:
        found = _TEAM_BUFFERS[start, role] = np.empty(shape, dtype)
    return found


def team_recurrence(spec, gx, w_hh, b_ih, b_hh, w_hr, h, c, y, lengths, reverse, int8):
    """An inference recurrence of a few rows on a team of threads split by hidden units
    (:mod:`fastrnn.team`). False, having done nothing, where a team does not apply: one
    thread, a batch for BLAS, projection, a shortened row, little work per step and row,
    a busy team. Each member packs its own slice of the weights (in parallel; a
    quantized model's stored ones with their scales, ``int8`` as in
    :meth:`CPUBackend.recurrence`) and, given a :class:`Projection`, computes its own
    gate columns of the input projection."""
    T, B, GH = gx.shape
    H = spec.hidden_size
    G = GH // H
    members = len(threads.split(H, TEAM_MIN_UNITS))
    work = GH * h.shape[1]
    if members < 2 or B >= cpu.BLAS_MIN_BATCH or w_hr.shape[0] or work < TEAM_MIN_WORK:
        return False
    if T * work < TEAM_MIN_SEQUENCE:
        return False
    if int(lengths.min()) != T:
        return False
    dtype = y.dtype
    hbuf = np.empty((2, B, H), dtype)
    hbuf[0] = h
    bar = np.zeros(3, np.int64)
    loop = recurrence.LOOPS[spec.kernels].team_sequence
    ones = np.ones(B, lengths.dtype)
    w_hh_t = w_hh.T  # (H, G·H)
    tasks, owned = [], []
    bounds = [H * i // members for i in range(members + 1)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        nu = stop - start
        h_own = np.ascontiguousarray(h[:, start:stop])
        c_own = np.ascontiguousarray(c[:, start:stop])

        def member(start=start, stop=stop, nu=nu, h_own=h_own, c_own=c_own):
            def own(a, role):  # the member's columns of every gate, side by side (a copy)
                rows = a.reshape(-1, a.shape[-1])
                out = team_buffer(start, role, (rows.shape[0], G * nu), a.dtype)
                gate_columns(rows, start, stop, G, H, out)
                return out.reshape(*a.shape[:-1], G * nu)

            def pair_panels(bits, role):  # the member's bfloat16 columns in pair panels
                panels = team_buffer(start, role, pairs.panel_shape(*bits.shape), np.uint32)
                pairs.pack_pairs(bits, panels)
                return panels

            stored, scales = (w_hh_t, None) if int8 is None else int8
            w_own = own(stored, "w_hh")
            if pairs_pay(stored):  # bfloat16 pairs, as at every batch size; the scales'
                # place takes the rows' pair scratch
                w_own, scales = pair_panels(w_own, "w_pairs"), pairs.scratch(B, H)
            else:
                if B == 1:  # in tiles (``fastrnn.tiles``), from this member's core's cache
                    W = tile_width(w_own.dtype)
                    shape = (-(-G * nu // W), H, W)
                    tiles = team_buffer(start, "w_tiles", shape, w_own.dtype)
                    pack_tiles(w_own, tiles)
                    w_own = tiles
                if scales is not None:
                    scales = own(scales, "scales")
            weights = recurrence.RecurrentWeights(
                w_own,
                scales,
                own(b_ih, "b_ih"),
                own(b_hh, "b_hh"),
                None,
            )
            scratch = recurrence.Scratch(
                np.empty((B, G * nu), dtype), np.empty((B, nu), dtype), np.empty((B, nu), dtype)
            )
            if isinstance(gx, Projection):  # the member's columns of x W_ih^T, computed here
                gx_own = team_buffer(start, "gx", (T * B, G * nu), dtype)
                stored_ih = None if gx.stored is None else gx.stored[0]
                if stored_ih is not None and pairs_pay(stored_ih):  # as Projection.compute
                    panels = pair_panels(own(stored_ih, "w_ih_bits"), "w_ih_pairs")
                    pairs.rows_product(np.ascontiguousarray(gx.X), panels, gx_own)
                else:
                    np.matmul(gx.X, own(gx.w_ih.T, "w_ih"), out=gx_own)
                gx_own = gx_own.reshape(T, B, G * nu)
            else:
                gx_own = own(gx, "gx")
            loop(
                gx_own, weights, hbuf, h_own, c_own, y, start, reverse, spec.activation,
                scratch, ones, bar, members,
            )  # fmt: skip

        tasks.append(member)
        owned.append((start, stop, h_own, c_own))
    if not team.run(tasks, bar):
        return False
    for start, stop, h_own, c_own in owned:
        h[:, start:stop] = h_own
        c[:, start:stop] = c_own
    return True
