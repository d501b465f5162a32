"""fastrnn's recurrent stack as PyTorch custom operators, for ``torch.compile``.

``fastrnn::rnn`` and ``fastrnn::rnn_backward`` (``torch.library.custom_op``) are single
graph nodes to the compiler; their fake implementations give it the output shapes
(the tape's from :meth:`fastrnn.engine.Tape.flat_shapes`). Eager mode does not come
here: :func:`fastrnn_torch._ops.rnn` uses the cheaper ``autograd.Function``.
"""

import torch
from torch import Tensor

from fastrnn import engine

from ._ops import _grad_or_zeros, _y_width, backward_impl, forward_impl, spec_for


@torch.library.custom_op("fastrnn::rnn", mutates_args=())
def rnn_op(
    x: Tensor,
    weights: list[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor,
    masks: list[Tensor],
    config: str,
    train: bool,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    return forward_impl(x, weights, h0, c0, lengths, masks, config, train)


@rnn_op.register_fake
def _rnn_fake(x, weights, h0, c0, lengths, masks, config, train):
    spec = spec_for(config)
    L, D, H, P = spec.num_layers, spec.num_directions, spec.hidden_size, spec.output_size
    T, B, _ = x.shape
    tape = [x.new_empty(s) for s in engine.Tape.flat_shapes(spec, T, B)] if train else []
    cn = x.new_empty((L * D, B, H)) if spec.has_cell_state else x.new_empty((0,))
    return x.new_empty((T, B, D * P)), x.new_empty((L * D, B, P)), cn, tape


@torch.library.custom_op("fastrnn::rnn_backward", mutates_args=())
def rnn_backward_op(
    grad_y: Tensor,
    grad_hn: Tensor,
    grad_cn: Tensor,
    x: Tensor,
    weights: list[Tensor],
    lengths: Tensor,
    masks: list[Tensor],
    tape: list[Tensor],
    config: str,
    input_grad: bool,
    param_grads: list[bool],
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    return backward_impl(
        grad_y, grad_hn, grad_cn, x, weights, lengths, masks, tape, config, input_grad, param_grads
    )


@rnn_backward_op.register_fake
def _rnn_backward_fake(
    grad_y, grad_hn, grad_cn, x, weights, lengths, masks, tape, config, input_grad, param_grads
):
    gx = torch.empty_like(x) if input_grad else x.new_empty((0,))
    gw = [torch.empty_like(w) for w in weights] if any(param_grads) else []
    return gx, torch.empty_like(grad_hn), torch.empty_like(grad_cn), gw


def _setup_context(ctx, inputs, output):
    x, weights, h0, c0, lengths, masks, config, train = inputs
    y, hn, cn, tape = output
    ctx.mark_non_differentiable(*tape)
    ctx.save_for_backward(x, lengths, *weights, *masks, *tape)
    ctx.counts = (len(weights), len(masks))
    ctx.config = config
    ctx.shapes = (tuple(hn.shape), tuple(cn.shape))
    ctx.train = train


def _backward(ctx, grad_y, grad_hn, grad_cn, grad_tape):
    if not ctx.train:
        raise RuntimeError(
            "fastrnn_torch: this forward ran without a tape (no input "
            "required grad when it ran); cannot backpropagate through it"
        )
    saved = ctx.saved_tensors
    nw, nm = ctx.counts
    x, lengths = saved[0], saved[1]
    weights = list(saved[2 : 2 + nw])
    masks = list(saved[2 + nw : 2 + nw + nm])
    tape = list(saved[2 + nw + nm :])
    needs = ctx.needs_input_grad  # (x, [each weight], h0, c0, lengths, [masks], ...)
    input_grad, param_grads = bool(needs[0]), [bool(n) for n in needs[1]]
    y_shape = tape[1].shape[:2] + (_y_width(ctx.config),)
    gx, gh, gc, gw = rnn_backward_op(
        _grad_or_zeros(grad_y, y_shape, x),
        _grad_or_zeros(grad_hn, ctx.shapes[0], x),
        _grad_or_zeros(grad_cn, ctx.shapes[1], x),
        x,
        weights,
        lengths,
        masks,
        tape,
        ctx.config,
        input_grad,
        param_grads,
    )
    gw = [g if need else None for g, need in zip(gw, needs[1])] if gw else [None] * nw
    return (
        gx if input_grad else None,
        gw,
        gh,
        gc if spec_for(ctx.config).has_cell_state else None,
        None,
        [None] * nm,
        None,
        None,
    )


_DOUBLE_BACKWARD = (
    "fastrnn_torch: double backward through a torch.compile'd recurrent layer is not "
    "supported; run that part eagerly (eager mode supports it)"
)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(_DOUBLE_BACKWARD)


def _setup_nothing(ctx, inputs, output):
    pass


rnn_op.register_autograd(_backward, setup_context=_setup_context)
rnn_backward_op.register_autograd(_no_double_backward, setup_context=_setup_nothing)
