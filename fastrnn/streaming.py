"""Streaming inference: the buffers behind ``step``, without allocation per call.

A *stream* is one sequence being stepped: it starts from ``None`` or from a state the
caller made (``initial_state``, or any array), and continues with the states ``step``
returns. Each stream owns three state buffers. A step reads its input state and
writes into a buffer that is neither the input nor the stream's latest result, so:

* the state passed in is never modified;
* every state ``step`` returns stays valid until its stream has advanced two more
  steps (copy it to keep it longer);
* any number of streams can be interleaved on one model (a server with many users).

After a stream's first step nothing is allocated. Memory is bounded: a model keeps
the workspaces of its ``MAX_SHAPES`` most recent batch shapes and, per shape, the
buffers of its ``MAX_STREAMS`` most recently used streams. A state whose stream was
dropped still works: it is read like a state the caller made, starting a new stream.
Calls on one model are serialised by a lock (the scratch space is shared); use a model
per thread to step in parallel.
"""

import threading
from collections import OrderedDict

import numpy as np

from . import recurrence

__all__ = ["Streams", "MAX_SHAPES", "MAX_STREAMS"]

MAX_SHAPES = 4
MAX_STREAMS = 64
_BUFFERS = 3


class _Stream:
    """Three state buffers, the objects handed out for them, and the latest one used."""

    __slots__ = ("buffers", "outputs", "returned", "latest", "anchor")

    def __init__(self, model, B, unbatched, anchor):
        L = model.num_layers
        h_shape, c_shape = model._state_shapes(B)
        if model.mode != "LSTM":
            c_shape = (L, B, 0)
        dt = model.dtype
        self.buffers = [(np.zeros(h_shape, dt), np.zeros(c_shape, dt)) for _ in range(_BUFFERS)]
        views = [(h[:, 0], c[:, 0]) if unbatched else (h, c) for h, c in self.buffers]
        self.outputs = [hv[-1] for hv, _ in views]
        self.returned = [v if model.mode == "LSTM" else v[0] for v in views]
        self.latest = -1
        self.anchor = anchor  # the caller's state this stream started from (kept alive)

    def target(self, source):
        """The buffer to write: neither the input ``source`` nor the latest result."""
        for i in range(_BUFFERS):
            if i != source and i != self.latest:
                return i
        raise AssertionError("unreachable: three buffers, two excluded")


class _Workspace:
    """Scratch space and streams of one batch shape."""

    def __init__(self, model, B, unbatched):
        L, P, H = model.num_layers, model.output_size, model.hidden_size
        GH = model._kern.GATES * H
        dt = model.dtype
        self.B, self.unbatched = B, unbatched
        self.params = [
            model._cell_params(layer, 0) + model._int8_params(layer) for layer in range(L)
        ]
        loops = recurrence.LOOPS[model._kern]
        self.step_layer = loops.step_layer_int8 if model._int8 else loops.step_layer
        # gx, gh, m, hp, lengths (all ones), no gate tape: step_layer's last arguments
        self.scratch = (
            np.empty((B, GH), dt),
            np.empty((B, GH), dt),
            np.empty((B, H), dt),
            np.empty((B, max(P, H)), dt),
            np.ones(B, np.int64),
            np.empty((0, 0), dt),
        )
        # the float weights' shapes, checked at every step (the kernels index with them)
        self.shapes = [tuple(a.shape for a in p[:5]) for p in self.params]
        self.streams = OrderedDict()  # key -> _Stream, least recently used first
        self.owner = {}  # id(object handed out) -> (stream key, buffer index)

    def _stream(self, model, key, anchor):
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = _Stream(model, self.B, self.unbatched, anchor)
            for i, obj in enumerate(stream.returned):
                self.owner[id(obj)] = (key, i)
            while len(self.streams) > MAX_STREAMS:
                _, old = self.streams.popitem(last=False)
                for obj in old.returned:
                    del self.owner[id(obj)]
        else:
            self.streams.move_to_end(key)
        return stream

    def step(self, model, x, state):
        for params, shapes in zip(self.params, self.shapes):
            for a, shape in zip(params, shapes):
                if a.shape != shape:
                    raise ValueError(
                        f"a parameter of {model!r} changed shape to {a.shape} (expected "
                        f"{shape}); restore it or load_state_dict() a matching one"
                    )
        found = None if state is None else self.owner.get(id(state))
        if found is not None and self.streams[found[0]].returned[found[1]] is state:
            stream = self._stream(model, found[0], None)
            source = found[1]
            h_in, c_in = stream.buffers[source]
        else:
            h_in, c_in = model._state_in(state, self.B, self.unbatched)
            # a caller's state object starts (or continues) the stream keyed by it
            key = object() if state is None else ("caller", id(state))
            stream = self._stream(model, key, state)
            source = -1
        out = stream.target(source)
        h, c = stream.buffers[out]
        if h_in is None:
            h.fill(0)
            c.fill(0)
        else:
            h[...] = h_in.reshape(h.shape)
            c[...] = c_in.reshape(c.shape)
        inp = x.reshape(self.B, model.input_size)
        if not inp.flags.c_contiguous:
            inp = np.ascontiguousarray(inp)
        step_layer, scratch, mode = self.step_layer, self.scratch, model._mode_code
        for layer, params in enumerate(self.params):
            step_layer(inp, *params, h[layer], c[layer], mode, *scratch)
            inp = h[layer]
        stream.latest = out
        return stream.outputs[out], stream.returned[out]


class Streams:
    """A model's streaming workspaces (one per recent batch shape) and their lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self._workspaces = OrderedDict()

    def step(self, model, x, state, B, unbatched):
        """One ``step`` of ``model`` (``x`` validated, of batch ``B``)."""
        with self.lock:
            key = (B, unbatched)
            ws = self._workspaces.get(key)
            if ws is None:
                ws = self._workspaces[key] = _Workspace(model, B, unbatched)
                while len(self._workspaces) > MAX_SHAPES:
                    self._workspaces.popitem(last=False)
            else:
                self._workspaces.move_to_end(key)
            return ws.step(model, x, state)

    def __len__(self):
        return len(self._workspaces)
