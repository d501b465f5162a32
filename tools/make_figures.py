"""Regenerate the pictures in docs/img (run from the repository root).

python tools/make_figures.py            # architecture.png and training_curves.png
"""

import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
IMG = os.path.join(ROOT, "docs", "img")


def architecture(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(10, 7.6))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 78)
    ax.axis("off")

    def box(x, y, w, h, title, lines, color):
        ax.add_patch(
            FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.6", fc=color, ec="#333333", lw=1)
        )
        ax.text(x + w / 2, y + h - 2.2, title, ha="center", va="top", fontsize=10, weight="bold")
        ax.text(
            x + w / 2,
            y + h - 6.5,
            "\n".join(lines),
            ha="center",
            va="top",
            fontsize=7.6,
            linespacing=1.45,
        )

    def arrow(x0, y0, x1, y1, text=""):
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops=dict(arrowstyle="->", lw=1.3, color="#333333"),
        )
        if text:
            ax.text((x0 + x1) / 2 + 1, (y0 + y1) / 2, text, fontsize=7, color="#333333")

    box(
        4,
        63,
        92,
        12,
        "bridge: fastrnn_torch (torch only here)",
        [
            "modules.py: drop-in RNN/LSTM/GRU/*Cell   convert.py: convert, export   attention.py",
            "_ops.py, _cells.py: autograd.Function (eager)   _compiled.py: fastrnn::rnn custom op"
            " (torch.compile)   _cuda.py",
        ],
        "#fde0c5",
    )
    box(
        4,
        44,
        92,
        13,
        "models: fastrnn (NumPy + Numba, never torch)",
        [
            "layers.py RNN/LSTM/GRU   cells.py *Cell   streaming.py step   quantized.py int8",
            "_inputs.py / _device_inputs.py: argument checks   io.py save/load   attention/",
            "reference.py: the plain-NumPy spec every kernel is tested against",
        ],
        "#d6eaf8",
    )
    box(
        4,
        25,
        92,
        13,
        "engine: fastrnn.engine (the one door to the kernels)",
        [
            "Spec   forward(...) -> (y, state, Tape)   backward(...) -> Gradients   CellAt",
            "driver.py: the layer x direction loop, written once over a backend",
            "engine/cpu.py CPUBackend (NumPy arrays)   cuda/backend.py CUDABackend (device arrays)",
        ],
        "#fcf3cf",
    )
    box(
        4,
        2,
        44,
        17,
        "CPU kernels (@njit, cached)",
        [
            "recurrence.py: time loops written once,",
            "specialised per cell (LOOPS[lstm], ...)",
            "lstm.py / gru.py / rnn.py: cell_step + backward_step",
            "linalg.py: small products (BLAS for big ones)",
        ],
        "#d5f5e3",
    )
    box(
        52,
        2,
        44,
        17,
        "CUDA kernels (numba.cuda, optional)",
        [
            "cuda/recurrence_forward.py, recurrence_backward.py:",
            "persistent recurrence, one launch per layer-direction",
            "cuda/linalg.py: tiled GEMM (cuBLAS via the bridge)",
            "attention/*_cuda.py; numba.cuda imported on first use",
        ],
        "#e8daef",
    )
    arrow(50, 62.4, 50, 57.6, "engine calls on tensors viewed as arrays (no copies)")
    arrow(50, 43.4, 50, 38.6, "checked arrays, caller-owned buffers")
    arrow(26, 24.4, 26, 19.6, "host arrays")
    arrow(74, 24.4, 74, 19.6, "device arrays (__cuda_array_interface__)")
    ax.set_title(
        "fastrnn: imports in one direction (bridge -> models -> engine -> kernels)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def training_curves(path):
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "time_series.py"),
            "--steps",
            "60",
            "--curves",
            path,
        ],
        check=True,
    )


if __name__ == "__main__":
    os.makedirs(IMG, exist_ok=True)
    architecture(os.path.join(IMG, "architecture.png"))
    training_curves(os.path.join(IMG, "training_curves.png"))
