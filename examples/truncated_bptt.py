"""Truncated BPTT with fastrnn: chunks, carried state, and the gradient across borders.

A long sequence is cut into chunks. Forward: each chunk starts from the state the
previous one ended with (``forward_train(x_chunk, hx=state)``). Backward, from the
last chunk to the first: each chunk's ``grads.hx`` (the gradient w.r.t. the state
it started from) is the ``grad_state`` of the chunk before. Done that way the
chunked gradient is exactly the full-sequence gradient; dropping the carried
gradient (``grad_state=None``) gives classic truncated BPTT, which only needs the
tape of one chunk at a time.

    python examples/truncated_bptt.py
"""

import argparse

import numpy as np

import fastrnn


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.parse_args(argv)
    rng = np.random.default_rng(0)
    model = fastrnn.GRU(8, 32, num_layers=2, dtype="float64", seed=0)
    x = rng.standard_normal((120, 4, 8))
    grad_y = rng.standard_normal((120, 4, 32))

    y, _, tape = model.forward_train(x)
    full = model.backward(tape, grad_y)

    chunks = np.array_split(np.arange(len(x)), 4)
    state, tapes = None, []
    for idx in chunks:
        _, state, tape = model.forward_train(x[idx], state)
        tapes.append(tape)
    grad_state, total = None, {k: 0 for k in full.params}
    for idx, tape in zip(reversed(chunks), reversed(tapes)):
        grads = model.backward(tape, grad_y[idx], grad_state)
        grad_state = grads.hx  # carried across the border: exact BPTT
        for k, g in grads.params.items():
            total[k] = total[k] + g
    err = max(np.max(np.abs(total[k] - full.params[k])) for k in total)
    print(f"chunked (gradient carried) vs full BPTT: max |diff| = {err:.2e}")

    # Classic truncation: the gradient stops at each border, one tape alive at a time.
    state, truncated = None, {k: 0 for k in full.params}
    for idx in chunks:
        _, state, tape = model.forward_train(x[idx], state)
        grads = model.backward(tape, grad_y[idx])
        for k, g in grads.params.items():
            truncated[k] = truncated[k] + g
    rel = np.linalg.norm(truncated["weight_hh_l0"] - full.params["weight_hh_l0"]) / np.linalg.norm(
        full.params["weight_hh_l0"]
    )
    print(f"truncated (gradient stopped) vs full: relative difference of weight_hh_l0 = {rel:.2e}")


if __name__ == "__main__":
    main()
