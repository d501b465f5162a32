"""A team of threads that runs one recurrence of a few rows together, in step.

A batch too small to split by rows (one stream, a few rows) is split by hidden units.
Each member owns a slice of the units (all their gates) with its slice of ``W_hh``
packed contiguously, small enough to stay in its core's cache, and the members meet
once per time step at a spin barrier (:func:`barrier`, on LLVM atomics), because every
member needs the whole new ``h`` for the next step. The members are the caller and
:mod:`fastrnn.threads`' workers, each running one ``nogil`` kernel for the whole
sequence: no task per step.

Each member is held on a CPU of its own while the team runs (:func:`threads.run`): the
members wait for each other every step, and Linux, left to itself, moved one of them
onto the other's CPU here, where the two then took turns for whole calls (an H=256 LSTM
at T=100: 7 ms instead of 2.4 ms, see docs/performance.md).

One team runs at a time: a call that finds the team busy (another Python thread's)
computes on its own thread instead, so teams never wait on each other. A member that
fails raises an abort flag that the others see at the barrier.
"""

import os
import threading

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import threads
from ._jit import kernel

_BUSY = threading.Lock()


def _unlock_in_child():
    """In a forked child no team is running (its members were the parent's threads)."""
    global _BUSY
    _BUSY = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unlock_in_child)


def _pointer(context, builder, array_type, array, index):
    ary = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, ary, [index])


@intrinsic
def _atomic_add(typingctx, arr, index, value):
    """``arr[index] += value`` atomically (int64 array); returns the old value."""

    def codegen(context, builder, signature, args):
        ptr = _pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return types.int64(arr, index, value), codegen


@intrinsic
def _atomic_load(typingctx, arr, index):
    """``arr[index]`` read with acquire ordering (int64 array)."""

    def codegen(context, builder, signature, args):
        ptr = _pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, index), codegen


@intrinsic
def _atomic_store(typingctx, arr, index, value):
    """``arr[index] = value`` with release ordering (int64 array)."""

    def codegen(context, builder, signature, args):
        ptr = _pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(arr, index, value), codegen


@intrinsic
def _yield_cpu(typingctx):
    """``sched_yield()`` (libc): let another thread run on this core."""

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield"
        )
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


#: Spins before a waiting member starts yielding its core (tens of microseconds): a
#: step's barrier is crossed spinning, and an oversubscribed machine (more runnable
#: threads than cores) still makes progress.
SPINS = 20000

# The barrier's words: [0] arrivals, [1] generation, [2] abort flag.


@kernel
def barrier(bar, members):
    """Wait until all ``members`` arrived; False if a member aborted."""
    generation = _atomic_load(bar, 1)
    if _atomic_add(bar, 0, 1) == members - 1:
        _atomic_store(bar, 0, 0)
        _atomic_add(bar, 1, 1)
        return _atomic_load(bar, 2) == 0
    spins = 0
    while _atomic_load(bar, 1) == generation:
        if _atomic_load(bar, 2) != 0:
            return False
        spins += 1
        if spins > SPINS:
            _yield_cpu()
    return _atomic_load(bar, 2) == 0


def run(tasks, bar):
    """Run ``tasks`` (callables that meet at ``barrier(bar, len(tasks))``) together, the
    first on the calling thread, each held on a CPU of its own (:func:`threads.run`).
    Returns False, having run nothing, when another team is running or the caller is
    itself a worker; raises the first member's error."""
    if threads.inside() or not _BUSY.acquire(blocking=False):
        return False
    try:

        def guarded(task):
            try:
                task()
            except BaseException:
                bar[2] = 1  # the others leave the barrier
                raise

        threads.run(guarded, [(task,) for task in tasks], hold=True)
        return True
    finally:
        _BUSY.release()
