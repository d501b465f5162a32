"""Character-level language model trained with fastrnn's core alone (no torch).

An LSTM reads one-hot characters of ``data/recurrence.txt``; a linear layer and a
softmax predict the next character. Training uses truncated BPTT over chunks
(the state is carried from chunk to chunk), gradient clipping and Adam, all in
NumPy. At the end the model writes a sample, one ``step`` at a time.

    python examples/numpy_char_rnn.py [--steps 600] [--hidden 128]
"""

import argparse
import pathlib
import time

import numpy as np

import fastrnn
from fastrnn.progress import progress

TEXT = pathlib.Path(__file__).with_name("data") / "recurrence.txt"


class Adam:
    """Adam on a dict of parameter arrays, updated in place."""

    def __init__(self, params, lr=3e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.b1, self.b2, self.eps, self.t = params, lr, *betas, eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads):
        self.t += 1
        for k, p in self.params.items():
            g = grads[k]
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            m_hat = self.m[k] / (1 - self.b1**self.t)
            v_hat = self.v[k] / (1 - self.b2**self.t)
            p -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype)


def softmax_xent(logits, targets):
    """Mean cross-entropy and its gradient w.r.t. ``logits`` (N, V)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(targets)
    loss = -np.log(p[np.arange(n), targets] + 1e-12).mean()
    p[np.arange(n), targets] -= 1
    return loss, p / n


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=600, help="training steps (default: %(default)s)")
    ap.add_argument("--hidden", type=int, default=128, help="hidden size (default: %(default)s)")
    ap.add_argument(
        "--seq",
        type=int,
        default=48,
        help="characters/words per training chunk (default: %(default)s)",
    )
    ap.add_argument("--batch", type=int, default=16, help="batch size (default: %(default)s)")
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for data and weights (default: %(default)s)",
    )
    args = ap.parse_args(argv)

    text = TEXT.read_text()
    chars = sorted(set(text))
    V, H = len(chars), args.hidden
    index = {c: i for i, c in enumerate(chars)}
    data = np.array([index[c] for c in text])
    rng = np.random.default_rng(args.seed)

    lstm = fastrnn.LSTM(V, H, seed=args.seed)
    head = {
        "w": (rng.standard_normal((H, V)) / np.sqrt(H)).astype(np.float32),
        "b": np.zeros(V, np.float32),
    }
    params = {**lstm.state_dict(), **{"head." + k: v for k, v in head.items()}}
    opt = Adam(params)
    eye = np.eye(V, dtype=np.float32)

    # Each batch row reads its own stretch of the text, chunk after chunk.
    span = len(data) // args.batch
    starts = np.arange(args.batch) * span
    state, pos, first_loss = None, 0, None
    start = time.perf_counter()
    for _ in progress(range(args.steps), desc="training"):
        if pos + args.seq + 1 > span:
            pos, state = 0, None
        idx = starts[None, :] + pos + np.arange(args.seq)[:, None]
        x, target = eye[data[idx]], data[idx + 1]
        y, state, tape = lstm.forward_train(x, state)  # truncated BPTT: start from last state
        logits = y.reshape(-1, H) @ head["w"] + head["b"]
        loss, dlogits = softmax_xent(logits, target.reshape(-1))
        grads = lstm.backward(tape, (dlogits @ head["w"].T).reshape(y.shape).astype(np.float32))
        g = {
            **grads.params,
            "head.w": (y.reshape(-1, H).T @ dlogits).astype(np.float32),
            "head.b": dlogits.sum(0).astype(np.float32),
        }
        fastrnn.clip_grad_norm(g, 5.0)
        opt.step(g)
        pos += args.seq
        first_loss = loss if first_loss is None else first_loss
    print(
        f"loss {first_loss:.3f} -> {loss:.3f} (uniform guess: {np.log(V):.3f}), "
        f"{time.perf_counter() - start:.1f} s"
    )

    # Generate with the streaming API, one character at a time.
    state = lstm.initial_state(1)
    ch = index["T"]
    out = ["T"]
    for _ in range(300):
        y_t, state = lstm.step(eye[ch][None], state)
        logits = y_t[0] @ head["w"] + head["b"]
        p = np.exp((logits - logits.max()) / 0.7)
        ch = rng.choice(V, p=p / p.sum())
        out.append(chars[ch])
    print("sample:", "".join(out))
    return first_loss, loss


if __name__ == "__main__":
    main()
