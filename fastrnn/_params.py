"""Parameter handling shared by layers and cells: torch names, init, state_dict I/O."""

import numpy as np

from . import _validation as check


class ParameterMixin:
    """Needs ``_param_shapes()`` (torch's names and shapes, in torch's order),
    ``hidden_size`` and ``dtype``; provides init, ``state_dict``, ``load_state_dict`` and
    the resident GPU copy (``to_device``)."""

    _device_params = None  # resident GPU copies of the parameters (``to_device``)

    def _init_params(self, seed):
        """torch's init: every parameter uniform in ±1/sqrt(hidden_size).

        ``W_ih`` and ``W_hh`` are stored column-major (their transposes are C-contiguous):
        the batch-1 products stream the transposes' rows (see ``linalg.matmul_t``), so
        they read the model's own memory, and in-place edits of these arrays reach every
        path without a copy to keep in sync.
        """
        rng = np.random.default_rng(check.seed(seed))
        bound = 1.0 / np.sqrt(self.hidden_size)
        params = {}
        for name, shp in self._param_shapes().items():
            value = rng.uniform(-bound, bound, size=shp).astype(self.dtype)
            column_major = name.startswith(("weight_ih", "weight_hh"))
            params[name] = np.asfortranarray(value) if column_major else value
        return params

    def state_dict(self):
        """The parameters under torch's names, in torch's order.

        Returns
        -------
        dict of str to ndarray
            The model's own arrays (like torch, not copies): updating them in
            place updates the model.
        """
        return dict(self._params)

    named_parameters = state_dict

    def load_state_dict(self, state_dict):
        """Copy parameters from ``state_dict`` (NumPy arrays or torch tensors).

        Values are converted to the model's dtype. Nothing is changed unless
        every entry is valid.

        Raises
        ------
        ValueError
            On missing or unexpected keys, a wrong shape, or non-finite values.
        """
        if getattr(self, "_int8", None):
            raise TypeError(
                "load_state_dict on a quantized model: load into the float32 "
                "model and call quantize() again"
            )
        check.mapping("state_dict", state_dict)
        expected = self._param_shapes()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            raise ValueError(
                f"state_dict does not match {self!r}: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        arrays = {}
        for name, shp in expected.items():
            value = check.to_numpy(state_dict[name])
            if value.shape != shp:
                raise ValueError(f"state_dict[{name!r}] must have shape {shp}; got {value.shape}")
            if value.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{name!r}] must be a real array; got {value.dtype}")
            with np.errstate(over="ignore", invalid="ignore"):
                cast = value.astype(self.dtype)
            if not np.all(np.isfinite(cast)):
                reason = (
                    f"beyond {self.dtype.name}'s range"
                    if np.all(np.isfinite(value))
                    else "NaN or inf"
                )
                raise ValueError(
                    f"state_dict[{name!r}] has non-finite values in the model's dtype "
                    f"{self.dtype.name} ({reason})"
                )
            arrays[name] = cast
        for name, value in arrays.items():
            np.copyto(self._params[name], value)
        self._weights_changed()
        if getattr(self, "_device_params", None) is not None:
            self.to_device()  # keep the resident GPU copy in step

    def to_device(self):
        """Keep a copy of the parameters on the GPU; returns the model.

        Device inputs then use the resident copy instead of copying the weights
        at every call. The copy is taken now: ``load_state_dict`` refreshes it,
        in-place edits of the host arrays need another ``to_device()``.
        """
        from .cuda import require, to_device

        require(f"{type(self).__name__}.to_device()")
        self._device_params = {name: to_device(p) for name, p in self._params.items()}
        return self

    def device_state_dict(self):
        """The resident GPU parameters (after :meth:`to_device`), under torch's names.

        The model's own device arrays, like :meth:`state_dict`'s host arrays: an
        optimizer step written into them in place updates the model on the GPU (copy
        them back with ``load_state_dict({k: v.copy_to_host() ...})``).
        """
        if self._device_params is None:
            raise RuntimeError("device_state_dict: call to_device() first")
        return dict(self._device_params)

    def _check_param_shapes(self):
        """The kernels index with the configured sizes: refuse parameters whose shape
        changed under the model (``state_dict()[k].shape = ...``) before any kernel runs."""
        expected = self.__dict__.get("_expected_shapes")
        if expected is None:
            expected = self.__dict__["_expected_shapes"] = self._param_shapes()
        for name, shape in expected.items():
            got = self._params[name].shape
            if got != shape:
                raise ValueError(
                    f"parameter {name!r} has shape {got}, but this model's configuration needs "
                    f"{shape}; restore it or load_state_dict() a matching one"
                )

    #: Bumped by every ``load_state_dict``: a training tape records it, and ``backward``
    #: refuses a tape recorded with other weights.
    weights_version = 0

    def _weights_changed(self):
        self.weights_version += 1
        layer = getattr(self, "_layer", None)  # a cell shares its arrays with a layer
        if layer is not None:
            layer._weights_changed()
