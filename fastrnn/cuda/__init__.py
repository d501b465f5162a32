"""fastrnn on CUDA GPUs: the ``numba.cuda`` kernels of the recurrences (the engine's
CUDA backend, :mod:`fastrnn.cuda.backend`) and the device products; the attention
kernels live beside their CPU twins in :mod:`fastrnn.attention`.

Importing this package is cheap and never touches CUDA; ``numba.cuda`` (from the
``numba-cuda`` package, extra ``[cuda]``) is imported on first use. With
``NUMBA_ENABLE_CUDASIM=1`` every kernel runs on Numba's CUDA simulator, which
is how the test suite checks them on machines without a GPU.

Models take device arrays directly: call a model, ``forward_train`` or
``backward`` with anything that has ``__cuda_array_interface__`` (Numba device
arrays, CuPy arrays, torch CUDA tensors) and the results are Numba device
arrays. ``model.to_device()`` keeps the weights resident on the GPU.
"""

import os

__all__ = [
    "is_available",
    "is_simulator",
    "is_device_array",
    "as_device_array",
    "to_device",
    "require",
    "CudaUnavailableError",
    "using",
]


class CudaUnavailableError(RuntimeError):
    """fastrnn was asked to use CUDA where no usable GPU (or no numba-cuda) is present."""


def is_simulator():
    """True when Numba's CUDA simulator stands in for a GPU (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def is_available():
    """Whether fastrnn's CUDA kernels can run here: ``numba-cuda`` is installed and a
    GPU (or the simulator) is present. Never raises."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # no numba-cuda, no driver, no device: all mean "no"
        return False


def _why_unavailable():
    """None when CUDA is usable, else a sentence saying why not."""
    try:
        from numba import cuda
    except Exception as exc:  # numba-cuda not installed, or broken
        return f"numba.cuda cannot be imported ({exc}); install with pip install 'fastrnn[cuda]'"
    try:
        if cuda.is_available():
            return None
        cuda.current_context()  # raises the driver's reason when there is one
        return "no CUDA GPU was found"
    except Exception as exc:
        detail = " ".join(str(exc).split()).rstrip(":")
        return f"no usable CUDA GPU or driver ({type(exc).__name__}: {detail})"


def require(what):
    """Raise :class:`CudaUnavailableError` naming ``what`` unless CUDA is usable.

    Parameters
    ----------
    what : str
        What asked for the GPU, e.g. ``"LSTM.to_device()"``.
    """
    if is_simulator():
        return
    reason = _why_unavailable()
    if reason is not None:
        raise CudaUnavailableError(
            f"{what} needs a CUDA GPU, but {reason}. Check with "
            "fastrnn.cuda.is_available() before asking for the GPU"
        )


def is_device_array(obj):
    """True for objects that live on the GPU: ``__cuda_array_interface__`` holders
    and, under the simulator, its device arrays. Cheap; imports nothing."""
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    return type(obj).__name__ == "FakeCUDAArray"


def as_device_array(obj):
    """A Numba device array viewing ``obj``'s GPU memory (no copy)."""
    require("fastrnn.cuda.as_device_array()")
    from ._device import as_device_array as convert

    return convert(obj)


def to_device(array):
    """Copy a host array to the GPU (a Numba device array)."""
    require("fastrnn.cuda.to_device()")
    from ._device import to_device as copy

    return copy(array)


def using(stream=0, alloc=None):
    """Context manager: fastrnn's CUDA work inside runs on ``stream`` (a Numba stream)
    and allocates with ``alloc(shape, dtype) -> device array`` (Numba's allocator if
    None). A framework uses it to run fastrnn on its own stream and memory pool."""
    from ._device import using as context

    return context(stream, alloc)
