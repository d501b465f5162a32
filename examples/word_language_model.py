"""Word-level language model (LSTM, tied embeddings) trained with torch.nn or fastrnn.

The same model is built for each engine from the same seed; with ``--engine
fastrnn`` its ``nn.LSTM`` is swapped for fastrnn's kernels by
``fastrnn_torch.convert``. Prints the loss curve and training tokens/s.

    python examples/word_language_model.py --engine both [--steps 60]
"""

import argparse
import pathlib
import re
import time

import torch

import fastrnn_torch as frt

TEXT = pathlib.Path(__file__).with_name("data") / "recurrence.txt"


class WordLM(torch.nn.Module):
    def __init__(self, vocab, size, layers=2, dropout=0.2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, size)
        self.rnn = torch.nn.LSTM(size, size, num_layers=layers, dropout=dropout)
        self.drop = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(size, vocab)
        self.out.weight = self.embed.weight  # tied embeddings

    def forward(self, tokens, state=None):
        y, state = self.rnn(self.drop(self.embed(tokens)), state)
        return self.out(self.drop(y)), state


def batches(ids, seq, batch):
    n = (len(ids) - 1) // batch
    data = ids[: n * batch + 1]
    cols = torch.stack([data[i * n : (i + 1) * n + 1] for i in range(batch)], dim=1)
    while True:
        for pos in range(0, n - seq, seq):
            yield cols[pos : pos + seq], cols[pos + 1 : pos + seq + 1]


def train(engine, ids, vocab, args):
    torch.manual_seed(args.seed)
    model = WordLM(vocab, args.size)
    if engine == "fastrnn":
        frt.convert(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    state, losses = None, []
    data = batches(ids, args.seq, args.batch)
    warmup = 3  # compile/caches: excluded from the timing
    for step in range(args.steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        x, target = next(data)
        if state is not None:
            state = tuple(s.detach() for s in state)  # truncated BPTT
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    tokens = args.steps * args.seq * args.batch
    print(f"{engine:8} loss {losses[0]:.3f} -> {losses[-1]:.3f}   {tokens / elapsed:9.0f} tokens/s")
    return losses, tokens / elapsed


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
    ap.add_argument("--steps", type=int, default=60, help="training steps (default: %(default)s)")
    ap.add_argument(
        "--size", type=int, default=128, help="embedding and hidden size (default: %(default)s)"
    )
    ap.add_argument(
        "--seq",
        type=int,
        default=20,
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
    words = re.findall(r"\w+|[^\w\s]", TEXT.read_text().lower())
    vocab = sorted(set(words))
    ids = torch.tensor([vocab.index(w) for w in words])
    engines = ["torch", "fastrnn"] if args.engine == "both" else [args.engine]
    results = {e: train(e, ids, len(vocab), args) for e in engines}
    if len(results) == 2:
        print(f"fastrnn / torch tokens/s: {results['fastrnn'][1] / results['torch'][1]:.2f}x")
    return results


if __name__ == "__main__":
    main()
