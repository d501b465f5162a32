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

from . import _inputs, engine
from . import _validation as check
from .cuda import is_device_array

__all__ = ["Streams", "StreamingMixin", "MAX_SHAPES", "MAX_STREAMS"]

MAX_SHAPES = 4
MAX_STREAMS = 64
_BUFFERS = 3


class _Stream:
    """Three state buffers, the objects handed out for them, and the latest one used."""

    __slots__ = ("buffers", "outputs", "returned", "latest", "anchor", "plans")

    def __init__(self, model, B, unbatched, anchor):
        L = model.num_layers
        h_shape, c_shape = model.spec.state_shapes(B)
        if model.mode != "LSTM":
            c_shape = (L, B, 0)
        dt = model.dtype
        self.buffers = [(np.zeros(h_shape, dt), np.zeros(c_shape, dt)) for _ in range(_BUFFERS)]
        views = [(h[:, 0], c[:, 0]) if unbatched else (h, c) for h, c in self.buffers]
        self.outputs = [hv[-1] for hv, _ in views]
        self.returned = [v if model.mode == "LSTM" else v[0] for v in views]
        self.latest = -1
        self.anchor = anchor  # the caller's state this stream started from (kept alive)
        self.plans = {}  # (source buffer, target buffer) -> engine.StepPlan

    def plan(self, workspace, source, target):
        """The step from buffer ``source`` into ``target`` (``source`` -1: the target
        holds the state already, stepped in place), its argument lists made once."""
        found = self.plans.get((source, target))
        if found is None:
            h, c = self.buffers[target]
            h_in, c_in = self.buffers[source] if source >= 0 else (h, c)
            found = self.plans[source, target] = engine.step_plan(
                workspace.spec, workspace.params, h, c, workspace.scratch, h_in, c_in
            )
        return found

    def target(self, source):
        """The buffer to write: neither the input ``source`` nor the latest result."""
        for i in range(_BUFFERS):
            if i != source and i != self.latest:
                return i
        raise AssertionError("unreachable: three buffers, two excluded")


class _Workspace:
    """Scratch space and streams of one batch shape."""

    def __init__(self, model, B, unbatched):
        self.spec = model.spec
        self.B, self.unbatched = B, unbatched
        self.params = engine.step_weights(model.spec, model.state_dict(), model._int8, B)
        self.scratch = engine.step_scratch(model.spec, B)
        # the parameters and their shapes, checked at every step (the kernels index with
        # the configured sizes)
        self.arrays = list(model.state_dict().values())
        self.array_shapes = [a.shape for a in self.arrays]
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
        if [a.shape for a in self.arrays] != self.array_shapes:
            for a, shape in zip(self.arrays, self.array_shapes):
                if a.shape != shape:
                    raise ValueError(
                        f"a parameter of {model!r} changed shape to {a.shape} (expected "
                        f"{shape}); restore it or load_state_dict() a matching one"
                    )
        found = None if state is None else self.owner.get(id(state))
        if found is not None and self.streams[found[0]].returned[found[1]] is state:
            stream = self._stream(model, found[0], None)
            source = found[1]
        else:
            h_in, c_in = _inputs.streaming_state(model, state, self.B, self.unbatched)
            # a caller's state object starts (or continues) the stream keyed by it
            key = object() if state is None else ("caller", id(state))
            stream = self._stream(model, key, state)
            source = -1
        out = stream.target(source)
        if source < 0:  # a caller's state (or zeros): into the target buffer first
            h, c = stream.buffers[out]
            if h_in is None:
                h.fill(0)
                c.fill(0)
            else:
                h[...] = h_in.reshape(h.shape)
                c[...] = c_in.reshape(c.shape)
        # else the stream's own last state (the common case), read where it is
        inp = x if x.ndim == 2 else x.reshape(1, -1)
        flags = inp.flags
        if not (flags.c_contiguous and flags.aligned and flags.writeable):
            inp = np.array(inp, order="C")  # the plan's kernels take this one layout
        stream.plan(self, source, out)(inp)
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


class StreamingMixin:
    """The models' streaming inference (``step``) over their :class:`Streams`."""

    def step(self, x_t, state=None):
        """Advance every layer by one time step (streaming inference).

        Parameters
        ----------
        x_t : ndarray, shape (batch, input_size), or (input_size,) unbatched
        state : ndarray or tuple of ndarray, optional
            As returned by :meth:`initial_state` or a previous ``step``; zeros if None.

        Returns
        -------
        y_t : ndarray, shape (batch, H_out)
        state : same structure as ``state``

        Notes
        -----
        The ``state`` passed in is never modified. Each stream (a sequence started
        from ``None`` or from a state you made, continued with the states ``step``
        returns) has its own buffers: after its first step nothing is allocated, any
        number of streams can be interleaved on one model, and each returned state
        stays valid until its stream has advanced two more steps (copy it to keep it
        longer). Calls on one model are serialised; see :mod:`fastrnn.streaming`.
        """
        if self.bidirectional:
            raise ValueError(
                "step() needs a unidirectional model: the reverse direction of a "
                "bidirectional model depends on future inputs"
            )
        if not (type(x_t) is np.ndarray and x_t.dtype == self.dtype):  # fast path first
            if is_device_array(x_t):
                raise TypeError(
                    "x_t is a device array; step() streams on the CPU. On the GPU, "
                    "call the model on a length-1 sequence with the state"
                )
            x_t = check.array("x_t", x_t, self.dtype, f"(batch, {self.input_size})")
        if x_t.ndim not in (1, 2) or x_t.shape[-1] != self.input_size:
            raise ValueError(
                f"x_t must have shape (batch, {self.input_size}) or "
                f"({self.input_size},); got {x_t.shape}"
            )
        unbatched = x_t.ndim == 1
        B = 1 if unbatched else x_t.shape[0]
        return self._streams.step(self, x_t, state, B, unbatched)
