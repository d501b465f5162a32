"""Gradients of gradients: the forward again with torch.nn's own (twice
differentiable) recurrent operators, used only when a backward is asked to build a
graph (``create_graph=True``, ``gradgradcheck``). The first backward never comes here.

The computation is torch.nn's exactly: packed sequences for variable lengths, one
``torch._VF`` call per layer so that fastrnn's inter-layer dropout masks (drawn in the
forward) are applied as they were.
"""

import json

import torch
from torch.nn.utils.rnn import pack_padded_sequence

_VF_OPS = {"LSTM": torch._VF.lstm, "GRU": torch._VF.gru}


def _layer_weights(cfg, weights):
    """The flat weight list split per layer (both directions), in torch's order."""
    per_direction = 2 + 2 * bool(cfg["bias"]) + bool(cfg.get("proj_size", 0))
    D = 2 if cfg["bidirectional"] else 1
    n = per_direction * D
    return [weights[i * n : (i + 1) * n] for i in range(cfg["num_layers"])]


def forward(config, x, h0, c0, weights, lengths, masks):
    """``(y, h_n, c_n)`` as torch.nn computes them, differentiably, from the same inputs
    as fastrnn's forward (time-major ``x``; ``c0``/``c_n`` empty but for LSTM)."""
    cfg = json.loads(config)
    mode = cfg["mode"]
    D = 2 if cfg["bidirectional"] else 1
    T = x.shape[0]
    if mode == "RNN":
        op = torch._VF.rnn_relu if cfg["nonlinearity"] == "relu" else torch._VF.rnn_tanh
    else:
        op = _VF_OPS[mode]
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    data, batch_sizes = packed.data, packed.batch_sizes
    hs, cs = [], []
    for layer, params in enumerate(_layer_weights(cfg, weights)):
        rows = slice(layer * D, (layer + 1) * D)
        h = h0[rows].index_select(1, order)
        if mode == "LSTM":
            hx = (h, c0[rows].index_select(1, order))
            data, h_out, c_out = op(
                data, batch_sizes, hx, params, cfg["bias"], 1, 0.0, False, D == 2
            )
            cs.append(c_out.index_select(1, unorder))
        else:
            data, h_out = op(data, batch_sizes, h, params, cfg["bias"], 1, 0.0, False, D == 2)
        hs.append(h_out.index_select(1, unorder))
        if layer < len(masks):
            data = (
                data * pack_padded_sequence(masks[layer], lengths.cpu(), enforce_sorted=False).data
            )
    padded = torch.nn.utils.rnn.PackedSequence(data, batch_sizes, order, unorder)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(padded, total_length=T)
    h_n = torch.cat(hs, 0)
    c_n = torch.cat(cs, 0) if mode == "LSTM" else c0
    return y, h_n, c_n


def gradients(config, x, h0, c0, weights, lengths, masks, grad_y, grad_hn, grad_cn, needs):
    """The first-order gradients as a differentiable graph: ``needs`` says which of
    ``(x, h0, c0, *weights)`` want one; returns a list with None for the others."""
    with torch.enable_grad():
        # Fresh views, so that the gradients stop at them: asked of the inputs themselves,
        # autograd would also walk back through an input's own history (a state made by
        # earlier steps) to the weights used there, and count those steps' weight
        # gradients a second time.
        x, h0, c0 = x.view_as(x), h0.view_as(h0), c0.view_as(c0)
        weights = [w.view_as(w) for w in weights]
        inputs = [x, h0, c0, *weights]
        y, hn, cn = forward(config, x, h0, c0, weights, lengths, masks)
        outputs, grads = [y, hn], [grad_y, grad_hn]
        if json.loads(config)["mode"] == "LSTM":
            outputs.append(cn)
            grads.append(grad_cn)
        wanted = [t for t, need in zip(inputs, needs) if need]
        found = torch.autograd.grad(outputs, wanted, grads, create_graph=True, allow_unused=True)
    found = iter(found)
    return [next(found) if need else None for need in needs]
