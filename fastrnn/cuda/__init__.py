"""fastrnn on CUDA GPUs: ``numba.cuda`` kernels for the layers and attention.

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

__all__ = ["is_available", "is_simulator", "is_device_array", "as_device_array", "to_device",
           "attention"]


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


def is_device_array(obj):
    """True for objects that live on the GPU: ``__cuda_array_interface__`` holders
    and, under the simulator, its device arrays. Cheap; imports nothing."""
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    return type(obj).__name__ == "FakeCUDAArray"


def as_device_array(obj):
    """A Numba device array viewing ``obj``'s GPU memory (no copy)."""
    from ._device import as_device_array as convert
    return convert(obj)


def to_device(array):
    """Copy a host array to the GPU (a Numba device array)."""
    from ._device import to_device as copy
    return copy(array)


def __getattr__(name):
    if name == "attention":  # imported on first use: it compiles kernels
        import importlib
        return importlib.import_module(f"{__name__}.attention")
    raise AttributeError(f"module 'fastrnn.cuda' has no attribute {name!r}")
