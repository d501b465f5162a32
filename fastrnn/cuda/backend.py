"""The CUDA backend of the engine: device arrays, ``numba.cuda`` kernels, the current
device GEMM (``fastrnn.cuda.linalg``). The driver (:mod:`fastrnn.engine.driver`) calls
the same methods as on the CPU."""

from . import _device, linalg, recurrence
from .recurrence_backward import run_backward
from .recurrence_forward import run_forward

#: Cell type -> the code the device kernels branch on.
CELL_CODES = {"LSTM": 0, "GRU": 1, "RNN": 2}


def _placeholder(dtype, ndim):
    return _device.empty((1,) * ndim, dtype)


class CUDABackend:
    """Arrays and per-layer kernels on the GPU (or Numba's CUDA simulator)."""

    name = "cuda"

    @staticmethod
    def empty(shape, dtype):
        return _device.empty(shape, dtype)

    @staticmethod
    def zeros(shape, dtype):
        return linalg.zeros(shape, dtype)

    @staticmethod
    def multiply(a, b):
        return linalg.multiply(a, b)

    @staticmethod
    def project(X, w):
        out = _device.empty((X.shape[0], w.shape[0]), X.dtype)
        linalg.gemm(X, w, out, trans_b=True)
        return out

    @staticmethod
    def input_projection(X, w_ih, shape, stored=None):
        """A recurrence's ``X W_ih^T`` as ``shape`` (T, B, G·H) (computed now; ``stored``,
        a quantized model's stored weights, is for the CPU)."""
        return CUDABackend.project(X, w_ih).reshape(shape)

    @staticmethod
    def product_tn(a, b, out):
        linalg.gemm(a, b, out, trans_a=True)

    @staticmethod
    def product_nn(a, b, out, accumulate):
        linalg.gemm(a, b, out, beta=1.0 if accumulate else 0.0)

    @staticmethod
    def column_sum(a, out):
        linalg.column_sum(a, out)

    @staticmethod
    def each(jobs, batch):
        """Run independent ``jobs`` (a layer's directions), one after another."""
        for job in jobs:
            job()

    @staticmethod
    def recurrence(spec, *, gx, w_hh, b_ih, b_hh, w_hr, h, c, y, lengths, reverse, steps, int8):
        """One layer-direction forward; see ``CPUBackend.recurrence`` (``int8`` is
        ignored: device weights are float)."""
        T, B, _ = gx.shape
        H, P, dt = spec.hidden_size, spec.output_size, spec.dtype
        proj = spec.proj_size > 0
        h_buf = _device.empty((2, B, P), dt)  # the kernels alternate between two rows
        linalg.copy(h, h_buf[0])
        if steps is None:
            steps = (_placeholder(dt, 3), _device.empty((0, 1, 1), dt), _placeholder(dt, 3))
        run_forward(
            cell=CELL_CODES[spec.cell],
            activation=spec.activation,
            gx=gx,
            w_t=linalg.transpose(w_hh),
            b_ih=b_ih,
            b_hh=b_hh,
            w_hr_t=linalg.transpose(w_hr) if proj else _device.empty((0, P), dt),
            h_buf=h_buf,
            c=c,
            m=_device.empty((B, H), dt) if proj else _placeholder(dt, 2),
            y=y,
            lengths=lengths,
            reverse=reverse,
            tapes=tuple(steps),
            plan=recurrence.Plan(H, P, spec.gates, dt.itemsize),
        )
        linalg.copy(h_buf[T % 2], h)

    @staticmethod
    def recurrence_backward(spec, *, steps, w_hh, w_hr, lengths, reverse, dy, dh, dc):
        """One layer-direction's BPTT; see ``CPUBackend.recurrence_backward``."""
        gates, h_prev, c_prev = steps
        T, B, _ = gates.shape
        H, P, G, dt = spec.hidden_size, spec.output_size, spec.gates, spec.dtype
        proj = spec.proj_size > 0
        dgx = _device.empty((T, B, G * H), dt)
        dgh = _device.empty((T, B, G * H), dt) if spec.kernels.SEPARATE_DGH else dgx
        dhp = _device.empty((T, B, P), dt) if proj else _placeholder(dt, 3)
        mt = _device.empty((T, B, H), dt) if proj else _placeholder(dt, 3)
        dh_buf = _device.empty((2, B, P), dt)
        first = 0 if reverse else T - 1
        _device.launch(
            recurrence.seed_kernel,
            linalg.blocks(B * P),
            linalg.THREADS,
            dh_buf[0],
            dh,
            dy,
            first,
            lengths,
        )
        run_backward(
            cell=CELL_CODES[spec.cell],
            activation=spec.activation,
            gates=gates,
            h_prev=h_prev,
            c_prev=c_prev,
            w_hh=w_hh,
            w_hr=w_hr,
            proj=proj,
            dy=dy,
            dh_buf=dh_buf,
            dc=dc,
            dgx=dgx,
            dgh=dgh,
            dhp=dhp,
            mt=mt,
            lengths=lengths,
            reverse=reverse,
            plan=recurrence.Plan(H, P, G, dt.itemsize),
        )
        linalg.copy(dh_buf[T % 2], dh)
        return dgx, dgh, dhp, mt


CUDA = CUDABackend()
