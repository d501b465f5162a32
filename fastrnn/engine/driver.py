"""The layer x direction driver, written once for every backend.

Per layer and direction: one input-projection product over the whole sequence,
the recurrence (the backend's kernel), and in the backward pass the recurrence
walked back followed by every weight gradient as one product over all steps.
A backend (:class:`~fastrnn.engine.cpu.CPUBackend`,
``fastrnn.cuda.backend.CUDABackend``) supplies the arrays and those kernels.
"""

import functools

from .spec import suffix
from .tape import Gradients, Steps, Tape


def layer_params(spec, params, layer, direction, backend):
    """``(w_ih, w_hh, b_ih, b_hh, w_hr)`` of one layer-direction; zeros stand for absent
    biases and a (0, H) array for an absent projection."""
    p, sfx = params, suffix(layer, direction)
    if spec.bias:
        b_ih, b_hh = p[f"bias_ih{sfx}"], p[f"bias_hh{sfx}"]
    else:
        b_ih = b_hh = backend.zeros((spec.gates * spec.hidden_size,), spec.dtype)
    w_hr = (
        p[f"weight_hr{sfx}"] if spec.proj_size else backend.empty((0, spec.hidden_size), spec.dtype)
    )
    return p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], b_ih, b_hh, w_hr


def forward(spec, params, x, h, c, lengths, backend, train=False, masks=(), int8=None):
    """All layers over contiguous ``x`` (T, B, I): ``(y, tape or None)``; ``h``/``c``
    (L·D, B, ·) hold the initial state and are left holding the final one."""
    T, B, _ = x.shape
    D, P, H = spec.num_directions, spec.output_size, spec.hidden_size
    tape = Tape(lengths, masks=list(masks)) if train else None
    layer_input = x
    for layer in range(spec.num_layers):
        if train:
            tape.layer_inputs.append(layer_input)
        out = backend.empty((T, B, D * P), spec.dtype)
        X = layer_input.reshape((T * B, layer_input.shape[2]))
        jobs = []
        for d in range(D):
            steps = None
            if train:
                steps = Steps(
                    backend.empty((T, B, spec.tape_gates * H), spec.dtype),
                    backend.empty((T, B, P), spec.dtype),
                    backend.empty((T if spec.has_cell_state else 0, B, H), spec.dtype),
                )
                tape.steps.append(steps)
            jobs.append(functools.partial(_direction, spec, params, layer, d, X, h, c, out,
                                          lengths, steps, int8, backend))  # fmt: skip
        backend.each(jobs, B)
        layer_input = out
        if layer < len(masks):
            layer_input = backend.multiply(out, masks[layer])
    return layer_input, tape


def _direction(spec, params, layer, d, X, h, c, out, lengths, steps, int8, backend):
    """One layer-direction of :func:`forward`: its input projection and recurrence."""
    T, B = out.shape[:2]
    P, H = spec.output_size, spec.hidden_size
    k = layer * spec.num_directions + d
    w_ih, w_hh, b_ih, b_hh, w_hr = layer_params(spec, params, layer, d, backend)
    stored = None if int8 is None else int8.get(f"weight_ih{suffix(layer, d)}")
    gx = backend.input_projection(X, w_ih, (T, B, spec.gates * H), stored)
    backend.recurrence(
        spec,
        gx=gx,
        w_hh=w_hh,
        b_ih=b_ih,
        b_hh=b_hh,
        w_hr=w_hr,
        h=h[k],
        c=c[k],
        y=out[:, :, d * P : (d + 1) * P],
        lengths=lengths,
        reverse=bool(d),
        steps=steps,
        int8=None if int8 is None else int8.get(f"weight_hh{suffix(layer, d)}"),
    )


def backward(spec, params, tape, dy_all, dh_all, dc_all, backend, input_grad, param_grads):
    """BPTT from ``tape``: ``dy_all`` (T, B, D·P) is the output gradient; ``dh_all`` /
    ``dc_all`` enter as final-state gradients and leave as initial-state ones.

    ``param_grads`` is True (all), False (none) or a collection of parameter names;
    the others come back as zeros without their products being computed.
    """
    T, B = tape.layer_inputs[0].shape[:2]
    D, P = spec.num_directions, spec.output_size
    shapes = spec.param_shapes()
    wanted = set(shapes) if param_grads is True else set(param_grads or ())
    grads = {}
    for name, shape in shapes.items() if wanted else ():
        # every wanted gradient is written whole by the products below
        grads[name] = (backend.empty if name in wanted else backend.zeros)(shape, spec.dtype)

    def product(name, a, b):
        if name in wanted:
            backend.product_tn(a, b, grads[name])

    def column_sum(name, a):
        if name in wanted:
            backend.column_sum(a, grads[name])

    for layer in reversed(range(spec.num_layers)):
        layer_in = tape.layer_inputs[layer]
        X = layer_in.reshape((T * B, layer_in.shape[2]))
        need_dx = layer > 0 or input_grad
        d_input = backend.empty((T * B, X.shape[1]), spec.dtype) if need_dx else None
        walked = [None] * D  # each direction's recurrence walked back (concurrently)
        backend.each(
            [
                functools.partial(_walk_back, spec, params, layer, d, tape, dy_all, dh_all,
                                  dc_all, backend, walked)
                for d in range(D)
            ],
            B,
        )  # fmt: skip
        for d in range(D):
            k, sfx = layer * D + d, suffix(layer, d)
            w_ih = layer_params(spec, params, layer, d, backend)[0]
            steps = tape.steps[k]
            dgx, dgh, dhp, mt = walked[d]
            walked[d] = None
            G = dgx.shape[2]
            dgx2, dgh2 = dgx.reshape((T * B, G)), dgh.reshape((T * B, G))
            product(f"weight_ih{sfx}", dgx2, X)
            product(f"weight_hh{sfx}", dgh2, steps.h_prev.reshape((T * B, P)))
            column_sum(f"bias_ih{sfx}", dgx2)
            column_sum(f"bias_hh{sfx}", dgh2)
            if spec.proj_size:
                H = spec.hidden_size
                product(f"weight_hr{sfx}", dhp.reshape((T * B, P)), mt.reshape((T * B, H)))
            if need_dx:
                backend.product_nn(dgx2, w_ih, d_input, accumulate=d > 0)
        if not need_dx:
            return Gradients(None, (dh_all, dc_all), grads or None)
        d_input = d_input.reshape((T, B, X.shape[1]))
        if layer > 0 and layer - 1 < len(tape.masks):
            d_input = backend.multiply(d_input, tape.masks[layer - 1])
        dy_all = d_input
    return Gradients(dy_all, (dh_all, dc_all), grads or None)


def _walk_back(spec, params, layer, d, tape, dy_all, dh_all, dc_all, backend, walked):
    """One layer-direction's recurrence walked back (for :func:`backward`), into
    ``walked[d]``."""
    P = spec.output_size
    k = layer * spec.num_directions + d
    _, w_hh, _, _, w_hr = layer_params(spec, params, layer, d, backend)
    walked[d] = backend.recurrence_backward(
        spec,
        steps=tape.steps[k],
        w_hh=w_hh,
        w_hr=w_hr,
        lengths=tape.lengths,
        reverse=bool(d),
        dy=dy_all[:, :, d * P : (d + 1) * P],
        dh=dh_all[k],
        dc=dc_all[k],
    )
