"""Train an LSTM on the GPU with fastrnn's core alone (no torch), and again on the CPU.

Device inputs and targets, ``forward_train``/``backward`` on the device, and the
loss gradient and an SGD step as two small ``numba.cuda`` kernels writing into the
model's resident weights (``to_device`` / ``device_state_dict``). The same steps
on the CPU engine give the same losses (float64).

    python examples/gpu_training.py                                  # on a GPU
    NUMBA_ENABLE_CUDASIM=1 python examples/gpu_training.py --steps 3 --hidden 4 --length 5
"""

import argparse

import numpy as np
from numba import cuda

import fastrnn


@cuda.jit
def mse_grad(y, target, grad, loss):
    """grad = 2 (y - target) / n and loss[0] += (y - target)^2 / n, over flat arrays."""
    n = y.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        d = y[i] - target[i]
        grad[i] = 2 * d / n
        cuda.atomic.add(loss, 0, d * d / n)


@cuda.jit
def sgd(w, g, lr):
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        w[i] -= lr * g[i]


def grid(n):
    """``(blocks, threads)`` covering ``n`` elements (few threads on the simulator, which
    runs each one as a Python thread)."""
    threads = 8 if fastrnn.cuda.is_simulator() else 128
    return min(64, -(-n // threads)), threads


def data(length, batch, hidden, seed=0):
    """A noisy sine wave in, a phase-shifted one (as many channels as hidden units) out."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[:, None] * 0.3 + rng.uniform(0, 6, size=batch)
    x = np.sin(t)[:, :, None] + 0.05 * rng.standard_normal((length, batch, 1))
    phase = np.linspace(0, 1, hidden)
    return x, 0.8 * np.sin(t[:, :, None] + 0.5 + phase)


def train_gpu(x, target, steps, hidden, lr):
    model = fastrnn.LSTM(1, hidden, dtype="float64", seed=0).to_device()
    weights = model.device_state_dict()
    x_dev, t_dev = cuda.to_device(x), cuda.to_device(target.reshape(-1))
    grad_y = cuda.device_array(target.size)
    losses = []
    for _ in range(steps):
        y, _, tape = model.forward_train(x_dev)
        loss = cuda.to_device(np.zeros(1))
        mse_grad[grid(target.size)](y.reshape(target.size), t_dev, grad_y, loss)
        grads = model.backward(tape, grad_y.reshape(target.shape))
        for name, w in weights.items():
            sgd[grid(w.size)](w.reshape(w.size), grads.params[name].reshape(w.size), lr)
        losses.append(float(loss.copy_to_host()[0]))
    return losses


def train_cpu(x, target, steps, hidden, lr):
    model = fastrnn.LSTM(1, hidden, dtype="float64", seed=0)
    losses = []
    for _ in range(steps):
        y, _, tape = model.forward_train(x)
        d = y - target
        grads = model.backward(tape, 2 * d / d.size)
        for name, w in model.state_dict().items():
            w -= lr * grads.params[name]
        losses.append(float(np.mean(d * d)))
    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=200, help="training steps (default: %(default)s)"
    )
    parser.add_argument("--hidden", type=int, default=32, help="hidden size (default: %(default)s)")
    parser.add_argument(
        "--length", type=int, default=50, help="sequence length (default: %(default)s)"
    )
    parser.add_argument("--batch", type=int, default=16, help="batch size (default: %(default)s)")
    parser.add_argument(
        "--lr", type=float, default=0.5, help="learning rate (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    x, target = data(args.length, args.batch, args.hidden)
    gpu = train_gpu(x, target, args.steps, args.hidden, args.lr)
    cpu = train_cpu(x, target, args.steps, args.hidden, args.lr)
    where = "simulator" if fastrnn.cuda.is_simulator() else "GPU"
    for i in sorted({0, len(gpu) // 2, len(gpu) - 1}):
        print(f"step {i:4d}  loss on the {where} {gpu[i]:.6f}  on the CPU {cpu[i]:.6f}")
    print(f"max |loss difference| = {max(abs(a - b) for a, b in zip(gpu, cpu)):.1e}")
    return gpu, cpu


if __name__ == "__main__":
    main()
