"""Time-series predictor: an LSTMCell loop (torch.nn or fastrnn) forecasting noisy sines.

The cell is stepped by hand over each window, then run on its own predictions
for the forecast horizon, as in the classic "time sequence prediction" example.
``--engine fastrnn`` uses ``fastrnn_torch.LSTMCell``. Prints samples/s.

    python examples/time_series.py --engine both [--steps 40]
"""

import argparse
import math
import time

import torch

import fastrnn_torch as frt


class Forecaster(torch.nn.Module):
    def __init__(self, cell_class, hidden=64):
        super().__init__()
        self.cell = cell_class(1, hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x, future=0):
        B = x.shape[0]
        h = x.new_zeros(B, self.cell.hidden_size)
        c = x.new_zeros(B, self.cell.hidden_size)
        outputs = []
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t : t + 1], (h, c))
            outputs.append(self.head(h))
        for _ in range(future):
            h, c = self.cell(outputs[-1], (h, c))
            outputs.append(self.head(h))
        return torch.cat(outputs, dim=1)


def data(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    t = torch.arange(length + 1, dtype=torch.float32) * 0.2
    series = torch.sin(t + phase) + 0.05 * torch.randn(n, length + 1, generator=g)
    return series[:, :-1], series[:, 1:]


def train(engine, args):
    torch.manual_seed(args.seed)
    cell = frt.LSTMCell if engine == "fastrnn" else torch.nn.LSTMCell
    model = Forecaster(cell, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data(args.batch, args.length, args.seed)
    warmup = 3  # compile/caches: excluded from the timing
    losses = []
    for step in range(args.steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 0:
            first = loss.item()
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        test_x, test_y = data(8, args.length, args.seed + 1)
        forecast = model(test_x[:, :-20], future=20)[:, -20:]
        err = torch.nn.functional.mse_loss(forecast, test_y[:, -20:]).item()
    rate = args.steps * args.batch / elapsed
    print(
        f"{engine:8} loss {first:.4f} -> {loss.item():.4f}  forecast mse {err:.4f}  "
        f"{rate:8.0f} samples/s"
    )
    return loss.item(), rate, losses


def plot_curves(results, path):
    """Both engines' training losses on one chart (they should overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    styles = {
        "torch": dict(color="#d95f02", linewidth=3, alpha=0.6, label="torch.nn LSTMCell"),
        "fastrnn": dict(
            color="#1b9e77", linewidth=1.2, linestyle="--", label="fastrnn_torch LSTMCell"
        ),
    }
    for engine, (_, _, losses) in results.items():
        ax.plot(range(1, len(losses) + 1), losses, **styles[engine])
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE loss")
    ax.set_title("examples/time_series.py: same seed, same data, both engines", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--engine",
        choices=["torch", "fastrnn", "both"],
        default="both",
        help="torch.nn, fastrnn_torch or both (default: %(default)s)",
    )
    ap.add_argument("--steps", type=int, default=40, help="training steps (default: %(default)s)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=32, help="batch size (default: %(default)s)")
    ap.add_argument("--length", type=int, default=60, help="sequence length (default: %(default)s)")
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for data and weights (default: %(default)s)",
    )
    ap.add_argument("--curves", metavar="PNG", help="also plot both engines' loss curves here")
    args = ap.parse_args(argv)
    engines = ["torch", "fastrnn"] if args.engine == "both" else [args.engine]
    results = {e: train(e, args) for e in engines}
    if len(results) == 2:
        print(f"fastrnn / torch samples/s: {results['fastrnn'][1] / results['torch'][1]:.2f}x")
    if args.curves:
        plot_curves(results, args.curves)
    return results


if __name__ == "__main__":
    main()
