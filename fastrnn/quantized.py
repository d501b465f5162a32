"""Quantized weight formats of the recurrent models: one class per format.

Each keeps the input and recurrent weights in fewer bytes, stored transposed for the
kernels that read them (the streaming ``step`` and the small-batch sequence kernel
widen them to float32 in registers: bytes per step are what bound batch-1 inference):

- :class:`Int8Weights`: int8 with one float32 scale per row (a quarter of the bytes);
- :class:`BFloat16Weights`: bfloat16, float32's upper 16 bits (half the bytes).

Arithmetic and state stay float32.
"""

import copy

import numpy as np

__all__ = ["Int8Weights", "BFloat16Weights", "FORMATS", "QuantizedMixin"]

_QUANTIZED = ("weight_ih", "weight_hh")


class _Format:
    """Name -> ``(transposed stored weights, row scales or None)``, read-only."""

    name = None

    def __init__(self, arrays):
        self.arrays = arrays
        for stored, scale in arrays.values():
            stored.flags.writeable = False
            if scale is not None:
                scale.flags.writeable = False

    def __bool__(self):
        return True

    @classmethod
    def quantize(cls, params):
        """Quantize ``params`` (float32, torch's names) in place to the values the stored
        weights stand for, and return the format holding the stored weights."""
        arrays = {}
        for name, p in params.items():
            if name.startswith(_QUANTIZED):
                stored, scale, values = cls._encode(p)
                arrays[name] = (np.ascontiguousarray(stored.T), scale)
                p[...] = values
        return cls(arrays)

    @staticmethod
    def _encode(p):
        """``(stored weights in torch's shape, row scales or None, the values they stand
        for)`` of one float32 weight matrix."""
        raise NotImplementedError

    def get(self, name, default=None):
        return self.arrays.get(name, default)

    def __getitem__(self, name):
        return self.arrays[name]

    @staticmethod
    def _check_names(tensors, want, describe):
        if set(tensors) != want:
            raise ValueError(
                f"quantized weights do not match {describe}: missing "
                f"{sorted(want - set(tensors))}, unexpected {sorted(set(tensors) - want)}"
            )


class Int8Weights(_Format):
    """int8 copies of a model's ``weight_ih*`` and ``weight_hh*``: name ->
    ``(transposed int8 weights, row scales)``.

    Row ``n`` of each weight matrix is divided by ``max|row| / 127`` and rounded.
    """

    name = "int8"

    @staticmethod
    def _encode(p):
        scale = np.abs(p).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        w8 = np.clip(np.rint(p / scale[:, None]), -127, 127).astype(np.int8)
        scale = scale.astype(np.float32)
        return w8, scale, w8 * scale[:, None]

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
        cls._check_names(tensors, set(expected) | {n + ".scale" for n in quantized}, describe)
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


def bfloat16_bits(values):
    """float32 ``values`` rounded to the nearest bfloat16 (ties to even), as uint16 bits."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def bfloat16_values(bits):
    """The float32 numbers that bfloat16 ``bits`` (uint16) stand for."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


class BFloat16Weights(_Format):
    """bfloat16 copies of a model's ``weight_ih*`` and ``weight_hh*``: name ->
    ``(transposed bfloat16 bits as uint16, None)``; each weight rounded to the nearest
    bfloat16 (8 significant bits, float32's range)."""

    name = "bfloat16"

    @staticmethod
    def _encode(p):
        bits = bfloat16_bits(p)
        return bits, None, bfloat16_values(bits)

    def state_dict(self, params):
        """The stored weights: each quantized ``name`` as bfloat16 bits (uint16, torch's
        shape); every other parameter of ``params`` as it is."""
        return {
            name: np.ascontiguousarray(self.arrays[name][0].T) if name in self.arrays else p
            for name, p in params.items()
        }

    @classmethod
    def from_state_dict(cls, tensors, expected, describe):
        """``(float parameters, format)`` from what :meth:`state_dict` wrote (the
        bfloat16 tensors as uint16 bits); ValueError for a missing, unexpected or
        malformed tensor."""
        cls._check_names(tensors, set(expected), describe)
        float_part, arrays = {}, {}
        for name, shape in expected.items():
            value = np.asarray(tensors[name])
            if name.startswith(_QUANTIZED):
                if value.dtype != np.uint16 or value.shape != shape:
                    raise ValueError(
                        f"{name} must be bfloat16 of shape {shape}; got {value.dtype} {value.shape}"
                    )
                arrays[name] = (np.ascontiguousarray(value.T), None)
                value = bfloat16_values(value)
                if not np.all(np.isfinite(value)):
                    raise ValueError(f"{name} has non-finite bfloat16 values")
            float_part[name] = value
        return float_part, cls(arrays)


#: Weight format name -> its class (what ``quantize`` and ``fastrnn.load`` accept).
FORMATS = {fmt.name: fmt for fmt in (Int8Weights, BFloat16Weights)}


def _read_only(params):
    """A quantized model's float parameters are read-only: an in-place edit would leave
    its quantized copy stale."""
    for p in params.values():
        p.flags.writeable = False


class QuantizedMixin:
    """The models' quantized copies: :meth:`quantize` and the formats' save/load."""

    _int8 = None  # the weight format of a quantized copy (an Int8Weights)

    def quantize(self, weights="int8"):
        """An inference copy whose input and recurrent weights are stored in fewer bytes.

        The streaming ``step`` and the small-batch sequence kernel read the stored
        weights (transposed) and widen them to float32 in registers; arithmetic and
        state stay float32. Bytes per step are what bound batch-1 inference:

        - ``"int8"``: row ``n`` of each weight matrix is divided by ``max|row| / 127``
          and rounded (a quarter of float32's bytes). Max abs error against the
          float32 model: about 1e-2 on outputs of torch-initialised layers.
        - ``"bfloat16"``: each weight rounded to the nearest bfloat16 (float32's upper
          16 bits: half the bytes). Max abs error: a few 1e-3.

        The copy's ``state_dict`` holds the weights the stored ones stand for, so its
        float paths (input projections, large batches) compute with the same numbers.
        Errors are measured by ``tests/test_quantize.py`` and stated in
        ``docs/performance.md``.

        Parameters
        ----------
        weights : {"int8", "bfloat16"}

        Returns
        -------
        model : same class, inference only (``forward_train`` and
            ``load_state_dict`` raise, and its arrays are read-only: edit the float32
            model and quantize it again).
        """
        fmt = FORMATS.get(weights) if isinstance(weights, str) else None
        if fmt is None:
            raise ValueError(f"weights must be one of {sorted(FORMATS)}; got {weights!r}")
        if self.dtype != np.float32:
            raise TypeError(f"quantize needs a float32 model; this one is {self.dtype}")
        params = {name: p.copy(order="K") for name, p in self._params.items()}
        return self._quantized_copy(params, fmt.quantize(params))

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
        """How the input and recurrent weights are stored: the dtype's name, or the
        format of a :meth:`quantize` copy (``"int8"``, ``"bfloat16"``)."""
        return self._int8.name if self._int8 else self.dtype.name

    def quantized_state_dict(self):
        """The stored weights of a quantized model, for ``fastrnn.save``.

        Returns
        -------
        dict of str to ndarray
            For each quantized weight ``name``: int8 weights, ``name`` (torch's shape)
            and ``name + ".scale"`` (float32, one scale per row); bfloat16 weights,
            ``name`` as bfloat16 bits (uint16, torch's shape). Every other parameter
            as in :meth:`state_dict`.
        """
        if not self._int8:
            raise TypeError("quantized_state_dict: this model is not quantized")
        return self._int8.state_dict(self._params)

    def load_quantized_state_dict(self, tensors, weights="int8"):
        """Make this float32 model the quantized model (format ``weights``) whose
        :meth:`quantized_state_dict` is ``tensors`` (bit-identical outputs); returns the
        model.

        Raises
        ------
        ValueError
            If ``weights`` is not a format, or a tensor is missing, unexpected, or of the
            wrong dtype or shape.
        """
        fmt = FORMATS.get(weights) if isinstance(weights, str) else None
        if fmt is None:
            raise ValueError(f"weights must be one of {sorted(FORMATS)}; got {weights!r}")
        float_part, weights = fmt.from_state_dict(tensors, self.spec.param_shapes(), repr(self))
        self.load_state_dict(float_part)
        self._int8, self._streams = weights, type(self._streams)()
        _read_only(self._params)
        return self
