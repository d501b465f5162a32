"""Device plumbing: the stream and allocator kernels run with, and array conversion.

Everything that launches a kernel or allocates device memory goes through
:func:`launch` and :func:`empty`, so a caller (the PyTorch bridge) can put the
work on its own stream and the memory in its own allocator with :func:`using`.
"""

import contextlib
import threading

import numpy as np
from numba import cuda

from . import is_simulator

_state = threading.local()


def _lock_simulator_shared_arrays():
    """Make the simulator's ``cuda.shared.array`` safe for the threads of a block.

    The simulator creates a block's shared array on the first call from any of its
    threads, with an unlocked check-then-insert: two threads can each create their
    own array, and then a barrier does not make one thread's writes visible to the
    other (seen as rare wrong results in this project's tests). Serialising the
    creation restores CUDA's semantics. Only ever applied under the simulator.
    """
    import sys
    import traceback

    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = getattr(kernelapi, "FakeCUDAShared", None)
    if shared is None or getattr(shared, "_fastrnn_locked", False):
        return
    create = shared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory: one fixed buffer
            return create(self, shape, dtype, alignment)
        # the simulator's own key: the calling line
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[-1])[0:2]
        if not isinstance(dtype, np.dtype) and hasattr(dtype, "bitwidth"):
            dtype = numpy_support.as_dtype(dtype)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = np.empty(shape, dtype)
                self._allocations[caller] = res
        return res

    shared.array = array
    shared._fastrnn_locked = True


if is_simulator():
    _lock_simulator_shared_arrays()


def _current():
    if not hasattr(_state, "stream"):
        _state.stream, _state.alloc = 0, None
    return _state


@contextlib.contextmanager
def using(stream=0, alloc=None):
    """Run the enclosed fastrnn CUDA work on ``stream``, allocating with ``alloc(shape,
    dtype) -> device array`` (Numba's allocator if None)."""
    state = _current()
    saved = state.stream, state.alloc
    state.stream, state.alloc = stream, alloc
    try:
        yield
    finally:
        state.stream, state.alloc = saved


def stream():
    return _current().stream


def empty(shape, dtype):
    """Uninitialised device array (through the current allocator)."""
    state = _current()
    if state.alloc is not None:
        return state.alloc(tuple(shape), np.dtype(dtype))
    return cuda.device_array(tuple(shape), np.dtype(dtype), stream=state.stream)


def launch(kernel, blocks, threads, *args, shared_bytes=0):
    """``kernel[blocks, threads, stream, shared_bytes](*args)`` on the current stream."""
    kernel[blocks, threads, stream(), shared_bytes](*args)


def to_device(array):
    array = np.ascontiguousarray(array)
    return cuda.to_device(array, stream=stream())


class _HostView:
    """``__array_interface__`` over memory that the simulator's "device" pointer names
    (host memory): lets the simulator accept ``__cuda_array_interface__`` objects."""

    def __init__(self, owner, desc):
        self.owner = owner  # keeps the memory alive as long as the view
        self.__array_interface__ = {
            "shape": tuple(desc["shape"]),
            "typestr": desc["typestr"],
            "data": desc["data"],
            "strides": desc.get("strides"),
            "version": 3,
        }


def as_device_array(obj):
    """A Numba device array over ``obj``'s memory, without copying.

    ``obj`` has ``__cuda_array_interface__`` (or already is a Numba device array).
    The interface's stream is not synchronised: the caller's stream orders the work.
    """
    if not is_simulator():
        from numba.cuda.cudadrv.devicearray import DeviceNDArray

        if isinstance(obj, DeviceNDArray):
            return obj
        if hasattr(obj, "__cuda_array_interface__"):
            return cuda.from_cuda_array_interface(
                obj.__cuda_array_interface__, owner=obj, sync=False
            )
    elif type(obj).__name__ == "FakeCUDAArray":
        return obj
    elif hasattr(obj, "__cuda_array_interface__"):
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(np.asarray(_HostView(obj, obj.__cuda_array_interface__)))
    raise TypeError(
        f"expected a device array (an object with __cuda_array_interface__); "
        f"got {type(obj).__name__}"
    )
