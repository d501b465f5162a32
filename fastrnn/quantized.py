"""Quantized weight formats of the recurrent models: one class per format.

:class:`Int8Weights` keeps the input and recurrent weights as int8 with one float32
scale per row, stored transposed for the kernels that read them (the streaming
``step`` and the small-batch sequence kernel widen them to float32 in registers: a
quarter of float32's bytes per step, which is what bounds batch-1 inference).
"""

import copy

import numpy as np

__all__ = ["Int8Weights", "QuantizedMixin"]

_QUANTIZED = ("weight_ih", "weight_hh")


class Int8Weights:
    """int8 copies of a model's ``weight_ih*`` and ``weight_hh*``: name ->
    ``(transposed int8 weights, row scales)``.

    Row ``n`` of each weight matrix is divided by ``max|row| / 127`` and rounded.
    """

    name = "int8"

    def __init__(self, arrays):
        self.arrays = arrays
        for w8, scale in arrays.values():
            w8.flags.writeable = False
            scale.flags.writeable = False

    def __bool__(self):
        return True

    def get(self, name, default=None):
        return self.arrays.get(name, default)

    def __getitem__(self, name):
        return self.arrays[name]

    @classmethod
    def quantize(cls, params):
        """Quantize ``params`` (float32, torch's names) in place to the values the int8
        weights stand for, and return the format holding the int8 weights."""
        arrays = {}
        for name, p in params.items():
            if name.startswith(_QUANTIZED):
                scale = np.abs(p).max(axis=1) / 127.0
                scale[scale == 0] = 1.0
                w8 = np.clip(np.rint(p / scale[:, None]), -127, 127).astype(np.int8)
                scale = scale.astype(np.float32)
                arrays[name] = (np.ascontiguousarray(w8.T), scale)
                p[...] = w8 * scale[:, None]
        return cls(arrays)

    def state_dict(self, params):
        """The stored weights: each quantized ``name`` as int8 (torch's shape) with
        ``name + ".scale"``; every other parameter of ``params`` as it is."""
        out = {}
        for name, p in params.items():
            if name in self.arrays:
                w8_t, scale = self.arrays[name]
                out[name] = np.ascontiguousarray(w8_t.T)
                out[name + ".scale"] = scale
            else:
                out[name] = p
        return out

    @classmethod
    def from_state_dict(cls, tensors, expected, describe):
        """``(float parameters, format)`` from what :meth:`state_dict` wrote.

        ``expected`` are the model's parameter names and shapes, ``describe`` the
        model's repr for messages. Raises ValueError for a missing, unexpected or
        malformed tensor.
        """
        quantized = [n for n in expected if n.startswith(_QUANTIZED)]
        want = set(expected) | {n + ".scale" for n in quantized}
        if set(tensors) != want:
            raise ValueError(
                f"quantized weights do not match {describe}: missing "
                f"{sorted(want - set(tensors))}, unexpected {sorted(set(tensors) - want)}"
            )
        float_part, arrays = {}, {}
        for name, shape in expected.items():
            value = np.asarray(tensors[name])
            if name in quantized:
                scale = np.asarray(tensors[name + ".scale"])
                if value.dtype != np.int8 or value.shape != shape:
                    raise ValueError(
                        f"{name} must be int8 of shape {shape}; got {value.dtype} {value.shape}"
                    )
                if (
                    scale.dtype != np.float32
                    or scale.shape != (shape[0],)
                    or not np.all(np.isfinite(scale))
                ):
                    raise ValueError(f"{name}.scale must be {shape[0]} finite float32 values")
                arrays[name] = (np.ascontiguousarray(value.T), scale.copy())
                value = value * scale[:, None]
            float_part[name] = value
        return float_part, cls(arrays)


def _read_only(params):
    """A quantized model's float parameters are read-only: an in-place edit would leave
    its quantized copy stale."""
    for p in params.values():
        p.flags.writeable = False


class QuantizedMixin:
    """The models' quantized copies: :meth:`quantize` and the formats' save/load."""

    _int8 = None  # the weight format of a quantized copy (an Int8Weights)

    def quantize(self, weights="int8"):
        """An inference copy whose input and recurrent weights are int8 with one scale per row.

        The streaming ``step`` and the small-batch sequence kernel read the int8
        weights (stored transposed) and widen them to float32 in registers: a
        quarter of float32's bytes per step, which is what bounds batch-1
        inference. Row ``n`` of each weight matrix is divided by
        ``max|row| / 127`` and rounded. The copy's ``state_dict`` holds the
        dequantized weights, so its float paths (input projections, large
        batches) compute with the same numbers. Max abs error against the float32
        model, measured by ``tests/test_quantize.py``: about 1e-2 on outputs of
        torch-initialised layers (stated in ``docs/performance.md``).

        Parameters
        ----------
        weights : {"int8"}

        Returns
        -------
        model : same class, inference only (``forward_train`` and
            ``load_state_dict`` raise, and its arrays are read-only: edit the float32
            model and quantize it again).
        """
        if weights != "int8":
            raise ValueError(f"weights must be 'int8'; got {weights!r}")
        if self.dtype != np.float32:
            raise TypeError(f"quantize needs a float32 model; this one is {self.dtype}")
        params = {name: p.copy(order="K") for name, p in self._params.items()}
        return self._quantized_copy(params, Int8Weights.quantize(params))

    def _quantized_copy(self, params, weights):
        q = copy.copy(self)
        q.__dict__.pop("_expected_shapes", None)
        q._params, q._int8, q._device_params, q._streams = (
            params,
            weights,
            None,
            type(self._streams)(),
        )
        _read_only(params)
        return q

    @property
    def weights_format(self):
        """How the input and recurrent weights are stored: the dtype's name, or ``"int8"``
        for a :meth:`quantize` copy."""
        return self._int8.name if self._int8 else self.dtype.name

    def quantized_state_dict(self):
        """The stored weights of a quantized model, for ``fastrnn.save``.

        Returns
        -------
        dict of str to ndarray
            For each quantized weight ``name``: ``name`` as int8 (torch's shape) and
            ``name + ".scale"`` (float32, one scale per row); every other parameter
            as in :meth:`state_dict`.
        """
        if not self._int8:
            raise TypeError("quantized_state_dict: this model is not quantized")
        return self._int8.state_dict(self._params)

    def load_quantized_state_dict(self, tensors):
        """Make this float32 model the quantized model whose :meth:`quantized_state_dict`
        is ``tensors`` (bit-identical outputs); returns the model.

        Raises
        ------
        ValueError
            If a tensor is missing, unexpected, or of the wrong dtype or shape.
        """
        float_part, weights = Int8Weights.from_state_dict(
            tensors, self.spec.param_shapes(), repr(self)
        )
        self.load_state_dict(float_part)
        self._int8, self._streams = weights, type(self._streams)()
        _read_only(self._params)
        return self
